package verifier

import (
	"context"
	"encoding/json"
	"sync"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/tpmauthn/tpmauthn/verifier/record"
)

// The connect path reads nothing from KV in the common case: credentials
// are kept with the revision this instance last wrote or read, and the one
// write of a connect is a compare-and-set at that revision. If another
// instance (or an operator) changed the record meanwhile, the write fails,
// the entry is dropped and the record re-read: a stale cache can cost a
// retry, never a wrong decision. Hosts change rarely and are kept current by
// a KV watch; every revocation also revokes the credentials one by one, so
// the credential's compare-and-set catches it even before the watch does.

type credEntry struct {
	cred record.Credential
	rev  uint64
}

// credCache holds credentials by ID.
type credCache struct {
	m sync.Map // string -> credEntry
}

func (c *credCache) get(id string) (*record.Credential, uint64, bool) {
	v, ok := c.m.Load(id)
	if !ok {
		return nil, 0, false
	}
	e := v.(credEntry)
	cred := e.cred // a copy: callers modify it
	cred.Sessions = append([]record.SessionRef(nil), e.cred.Sessions...)
	return &cred, e.rev, true
}

// peek returns the cached record without copying its
// sessions; the caller must not modify it.
func (c *credCache) peek(id string) (*record.Credential, bool) {
	v, ok := c.m.Load(id)
	if !ok {
		return nil, false
	}
	e := v.(credEntry)
	return &e.cred, true
}

// rev is the revision of the cached record, without copying it.
func (c *credCache) rev(id string) (uint64, bool) {
	v, ok := c.m.Load(id)
	if !ok {
		return 0, false
	}
	return v.(credEntry).rev, true
}

func (c *credCache) put(cred *record.Credential, rev uint64) {
	e := credEntry{cred: *cred, rev: rev}
	e.cred.Sessions = append([]record.SessionRef(nil), cred.Sessions...)
	c.m.Store(cred.ID, e)
}

func (c *credCache) drop(id string) { c.m.Delete(id) }

// hostCache holds hosts, kept current by watching the hosts bucket.
type hostCache struct {
	m sync.Map // string -> *record.Host
}

func (h *hostCache) get(id string) (*record.Host, bool) {
	v, ok := h.m.Load(id)
	if !ok {
		return nil, false
	}
	return v.(*record.Host), true
}

// watchHosts loads every host and follows changes until ctx ends.
func (v *Verifier) watchHosts(ctx context.Context) error {
	w, err := v.st.hosts.WatchAll(ctx)
	if err != nil {
		return err
	}
	v.wg.Add(1)
	go func() {
		defer v.wg.Done()
		for e := range w.Updates() {
			if e == nil {
				continue // initial values loaded
			}
			if e.Operation() != jetstream.KeyValuePut {
				v.hosts.m.Delete(e.Key())
				continue
			}
			var h record.Host
			if json.Unmarshal(e.Value(), &h) == nil && h.V == record.Version {
				v.hosts.m.Store(e.Key(), &h)
			}
		}
	}()
	return nil
}

// host returns a host from the cache, or KV on a miss.
func (v *Verifier) host(ctx context.Context, id string) (*record.Host, error) {
	if h, ok := v.hosts.get(id); ok {
		return h, nil
	}
	h, _, err := get[record.Host](ctx, v.st.hosts, id)
	if err != nil {
		return nil, err
	}
	v.hosts.m.Store(id, h)
	return h, nil
}
