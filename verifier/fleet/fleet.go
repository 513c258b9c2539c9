// Package fleet is the fleet's state as the verifier's services share it:
// the store, the caches the connect path reads instead of KV, per-credential
// locks, and the status changes every service makes the same way.
//
// The connect path reads nothing from KV in the common case: credentials
// are kept with the revision this instance last wrote or read, and the one
// write of a connect is a compare-and-set at that revision. If another
// instance (or an operator) changed the record meanwhile, the write fails,
// the entry is dropped and the record re-read: a stale cache can cost a
// retry, never a wrong decision. Hosts change rarely and are kept current by
// a KV watch; every revocation also revokes the credentials one by one, so
// the credential's compare-and-set catches it even before the watch does.
package fleet

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/verifier/record"
	"github.com/tpmauthn/tpmauthn/verifier/store"
)

// Fleet is the shared state. Its host watch runs until Close.
type Fleet struct {
	Store *store.Store
	// Misses are the connect path's recent look-ups that found nothing.
	Misses *Misses
	creds  credCache
	hosts  hostCache
	locks  credLocks
	log    *slog.Logger
	// current names each workload's current credential (host.workload ->
	// credential ID), kept by a watch of the workloads bucket.
	current sync.Map
	watches []jetstream.KeyWatcher
	wg      sync.WaitGroup
}

// New wraps st; Start loads the hosts and follows their changes.
func New(st *store.Store, log *slog.Logger) *Fleet {
	return &Fleet{Store: st, log: log, Misses: NewMisses(MissTTL, MaxMiss)}
}

// Start loads every host and workload index and follows changes to them
// until Close.
func (f *Fleet) Start(ctx context.Context) error {
	err := f.watch(ctx, f.Store.Hosts, func(key string, value []byte) {
		if value == nil {
			f.hosts.m.Delete(key)
			return
		}
		var h record.Host
		if json.Unmarshal(value, &h) == nil && h.V == record.Version {
			f.hosts.m.Store(key, &h)
		}
	})
	if err != nil {
		return err
	}
	return f.watch(ctx, f.Store.Workloads, func(key string, value []byte) {
		var w record.WorkloadIndex
		if value == nil || json.Unmarshal(value, &w) != nil || w.V != record.Version {
			f.current.Delete(key)
			return
		}
		f.current.Store(key, w.Credential)
	})
}

// watch follows every key of a bucket (value nil: deleted) until Close. The
// watch outlives ctx (a caller's deadline for starting up).
func (f *Fleet) watch(ctx context.Context, kv jetstream.KeyValue, apply func(key string, value []byte)) error {
	w, err := kv.WatchAll(context.WithoutCancel(ctx))
	if err != nil {
		return fmt.Errorf("watch %s: %w", kv.Bucket(), err)
	}
	f.watches = append(f.watches, w)
	f.wg.Go(func() {
		for e := range w.Updates() {
			switch {
			case e == nil: // initial values loaded
			case e.Operation() != jetstream.KeyValuePut:
				apply(e.Key(), nil)
			default:
				apply(e.Key(), e.Value())
			}
		}
	})
	return nil
}

// Close stops the watches and waits for them.
func (f *Fleet) Close() {
	for _, w := range f.watches {
		_ = w.Stop() // its updates channel closes: the loop ends
	}
	f.wg.Wait()
}

// CurrentCredential is the workload's current credential as the workload
// index says (the one a rotation moved it to), if this instance has seen it.
func (f *Fleet) CurrentCredential(host, workload string) (string, bool) {
	v, ok := f.current.Load(host + "." + workload)
	if !ok {
		return "", false
	}
	return v.(string), true
}

// Host returns a host from the cache, or KV on a miss.
func (f *Fleet) Host(ctx context.Context, id string) (*record.Host, error) {
	if h, ok := f.hosts.get(id); ok {
		return h, nil
	}
	h, _, err := store.Get[record.Host](ctx, f.Store.Hosts, id)
	if err != nil {
		return nil, err
	}
	f.hosts.m.Store(id, h)
	return h, nil
}

// ActiveHost reads a host from KV (not the cache) and requires it active.
func (f *Fleet) ActiveHost(ctx context.Context, id string) (*record.Host, error) {
	h, _, err := store.Get[record.Host](ctx, f.Store.Hosts, id)
	if errors.Is(err, api.ErrNotFound) {
		return nil, fmt.Errorf("%w: host %q", api.ErrNotFound, id)
	}
	if err != nil {
		return nil, err
	}
	if h.Status != api.HostActive {
		return nil, fmt.Errorf("%w: host %s is %s", api.ErrHostNotActive, h.ID, h.Status)
	}
	return h, nil
}

// Credential returns a credential and its revision from the cache, or KV on
// a miss (fromKV true: the caller may want to learn what it holds). The
// record is a copy the caller may change.
func (f *Fleet) Credential(ctx context.Context, id string) (c *record.Credential, rev uint64, fromKV bool, err error) {
	if c, rev, ok := f.creds.get(id); ok {
		return c, rev, false, nil
	}
	if f.Misses.Missed(missCredential + id) {
		return nil, 0, false, fmt.Errorf("%w: credential %s (looked up in vain just now)", api.ErrNotFound, id)
	}
	c, rev, err = store.Get[record.Credential](ctx, f.Store.Credentials, id)
	if errors.Is(err, api.ErrNotFound) {
		f.Misses.Miss(missCredential + id)
	}
	return c, rev, true, err
}

// missCredential prefixes a credential ID in Misses.
const missCredential = "cred:"

// CredentialCreated forgets a miss of credential id: it was just stored.
func (f *Fleet) CredentialCreated(id string) { f.Misses.Forget(missCredential + id) }

// PeekCredential returns the cached record without copying it (read only),
// or nil.
func (f *Fleet) PeekCredential(id string) *record.Credential {
	c, _ := f.creds.peek(id)
	return c
}

// CachedRevision is the revision of the cached credential record, if any.
func (f *Fleet) CachedRevision(id string) (uint64, bool) { return f.creds.rev(id) }

// Cache keeps a credential record at revision rev (this instance wrote or
// read it).
func (f *Fleet) Cache(c *record.Credential, rev uint64) { f.creds.put(c, rev) }

// Uncache drops a credential record (changed elsewhere: re-read it).
func (f *Fleet) Uncache(id string) { f.creds.drop(id) }

// Lock serializes the decisions about one credential within this process
// (other instances are ordered by the record's compare-and-set).
func (f *Fleet) Lock(id string) (unlock func()) { return f.locks.lock(id) }

// SetCredentialStatus moves a credential to status through its state
// machine (record.ErrTransition if the edge is illegal: revoked is final) in
// one compare-and-set. check, if set, sees the record first and may refuse
// the change. Kicking the credential's sessions is the caller's.
func (f *Fleet) SetCredentialStatus(ctx context.Context, id string, status api.CredentialStatus, reason string, check func(*record.Credential) error) (*record.Credential, error) {
	c, _, err := store.Mutate(ctx, f.Store.Credentials, id, func(c *record.Credential) error {
		if check != nil {
			if err := check(c); err != nil {
				return err
			}
		}
		return c.Transition(status, reason, time.Now())
	})
	return c, err
}

// HostCredentials lists a host's credentials.
func (f *Fleet) HostCredentials(ctx context.Context, host string) ([]*record.Credential, error) {
	all, err := store.List[record.Credential](ctx, f.Store.Credentials)
	if err != nil {
		return nil, err
	}
	return slices.DeleteFunc(all, func(c *record.Credential) bool { return c.Host != host }), nil
}

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

// credLocks serializes decisions per credential within this process.
type credLocks struct {
	mu sync.Mutex
	m  map[string]*lockEntry
}

type lockEntry struct {
	mu   sync.Mutex
	refs int
}

func (l *credLocks) lock(key string) (unlock func()) {
	l.mu.Lock()
	if l.m == nil {
		l.m = map[string]*lockEntry{}
	}
	e := l.m[key]
	if e == nil {
		e = &lockEntry{}
		l.m[key] = e
	}
	e.refs++
	l.mu.Unlock()
	e.mu.Lock()
	return func() {
		e.mu.Unlock()
		l.mu.Lock()
		if e.refs--; e.refs == 0 {
			delete(l.m, key)
		}
		l.mu.Unlock()
	}
}
