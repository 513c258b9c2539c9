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
	mu        sync.Mutex
	ids       map[string]bool
	refreshed time.Time
}

// KnownServer says whether id (a server nkey) is a server of this NATS
// system: the embedded server, or one that answers the system account's
// PING. An unknown ID makes it ask again, at most once a second; it fails
// closed (no answer, no system connection: unknown).
func (s *Sessions) KnownServer(ctx context.Context, id string) bool {
	if s.cfg.Only != "" {
		return id == s.cfg.Only
	}
	k := &s.servers
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.ids[id] {
		return true
	}
	if time.Since(k.refreshed) < serverRefreshEvery {
		return false
	}
	k.refreshed = time.Now()
	ids, err := s.pingServers(ctx, id)
	if err != nil {
		s.log.Warn("cannot list the NATS servers; unknown callout issuers are refused meanwhile", "error", err)
		return false
	}
	if k.ids == nil || len(k.ids) > 4096 { // server IDs change at every restart
		k.ids = map[string]bool{}
	}
	for _, i := range ids {
		k.ids[i] = true
	}
	return k.ids[id]
}

// pingServers asks every server for its ID, until want answers or the
// answers stop.
func (s *Sessions) pingServers(ctx context.Context, want string) ([]string, error) {
	if s.cfg.Sys == nil {
		return nil, errNoSys
	}
	inbox := nats.NewInbox()
	ch := make(chan *nats.Msg, 64)
	sub, err := s.cfg.Sys.ChanSubscribe(inbox, ch)
	if err != nil {
		return nil, err
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := s.cfg.Sys.PublishRequest("$SYS.REQ.SERVER.PING", inbox, nil); err != nil {
		return nil, err
	}
	var ids []string
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
			ids = append(ids, resp.Server.ID)
			if resp.Server.ID == want {
				return ids, nil
			}
			timer.Reset(connzWait)
		case <-timer.C:
			return ids, nil
		case <-ctx.Done():
			return ids, nil
		}
	}
}
