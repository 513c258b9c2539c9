package sessions

import (
	"context"
	"encoding/json"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
)

// Callout requests are JWTs issued by the asking server's nkey, and sealed
// to the verifier's xkey, which anyone who knows its public half can do.
// Only a server of the fleet may ask, so an issuer must be a server the
// system account knows: anyone who could publish on the callout subject
// otherwise gets signed user JWTs for requests of its own making.

// serverRefreshEvery bounds how often an unknown issuer makes the verifier
// ask the servers who they are (a forged request must not make it ping at
// will).
const serverRefreshEvery = time.Second

// knownServers is the set of server IDs that answered a PING.
type knownServers struct {
	mu  sync.RWMutex
	ids map[string]bool

	refresh   sync.Mutex // one PING at a time
	refreshed time.Time
}

func (k *knownServers) has(id string) bool {
	k.mu.RLock()
	defer k.mu.RUnlock()
	return k.ids[id]
}

func (k *knownServers) add(ids []string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.ids == nil || len(k.ids) > 4096 { // server IDs change at every restart
		k.ids = map[string]bool{}
	}
	for _, i := range ids {
		k.ids[i] = true
	}
}

// KnownServer says whether id (a server nkey) is a server of this NATS
// system: the embedded server, or one that answers the system account's
// PING. An unknown ID waits for the next PING (at most one a second, one at
// a time); it fails closed (no answer, no system connection: unknown).
func (s *Sessions) KnownServer(ctx context.Context, id string) bool {
	if s.cfg.Only != "" {
		return id == s.cfg.Only
	}
	k := &s.servers
	if k.has(id) {
		return true
	}
	k.refresh.Lock()
	defer k.refresh.Unlock()
	if k.has(id) { // the PING another caller waited for named it
		return true
	}
	if wait := serverRefreshEvery - time.Since(k.refreshed); wait > 0 {
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return false
		}
	}
	k.refreshed = time.Now()
	ids, err := s.pingServers(ctx, id)
	if err != nil {
		s.log.Warn("cannot list the NATS servers; unknown callout issuers are refused meanwhile", "error", err)
		return false
	}
	k.add(ids)
	return k.has(id)
}

// pingServers asks every server for its ID, until want answers or the
// answers stop.
func (s *Sessions) pingServers(ctx context.Context, want string) ([]string, error) {
	var ids []string
	_, err := s.pingAll(ctx, "$SYS.REQ.SERVER.PING", nil, func(id string, _ []byte) (bool, error) {
		ids = append(ids, id)
		return id == want, nil
	})
	return ids, err
}

// pingAll publishes a system-account PING on subject and hands each
// server's answer (its ID and the whole reply) to each, until each says it
// is done or fails, ctx ends, or the answers stop: kickTimeout for the
// first, connzWait after each (servers answer in parallel, within
// milliseconds). It reports whether any server answered.
func (s *Sessions) pingAll(ctx context.Context, subject string, body []byte, each func(id string, data []byte) (bool, error)) (bool, error) {
	if s.cfg.Sys == nil {
		return false, errNoSys
	}
	inbox := nats.NewInbox()
	ch := make(chan *nats.Msg, 64)
	sub, err := s.cfg.Sys.ChanSubscribe(inbox, ch)
	if err != nil {
		return false, err
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := s.cfg.Sys.PublishRequest(subject, inbox, body); err != nil {
		return false, err
	}
	answered := false
	timer := time.NewTimer(kickTimeout)
	defer timer.Stop()
	for {
		select {
		case m := <-ch:
			var resp struct {
				Server struct {
					ID string `json:"id"`
				} `json:"server"`
			}
			if json.Unmarshal(m.Data, &resp) != nil || resp.Server.ID == "" {
				continue
			}
			answered = true
			if done, err := each(resp.Server.ID, m.Data); done || err != nil {
				return true, err
			}
			timer.Reset(connzWait)
		case <-timer.C:
			return answered, nil
		case <-ctx.Done():
			return answered, nil
		}
	}
}
