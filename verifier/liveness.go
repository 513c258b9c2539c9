package verifier

import (
	"encoding/json"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
)

// The sessions a credential record names are rewritten with it on every
// connect and are what a revocation kicks. Without knowing which of them have
// ended, the list only shrinks as their JWTs expire: a workload that
// reconnects often carries up to maxSessions dead entries in every write
// (an 8 KB record, measured in the connect benchmark) and a live connection
// beyond the cap escapes the kick. The servers' disconnect and shutdown
// events say which have ended; the next write of the record leaves them out.

const (
	disconnectSubject = "$SYS.ACCOUNT." + AccountApp + ".DISCONNECT"
	shutdownSubject   = "$SYS.SERVER.*.SHUTDOWN"
	// sessionSweep is how often sessions past their expiry are forgotten.
	sessionSweep = time.Minute
	// maxSessions bounds the sessions kept per credential (the record's
	// size).
	maxSessions = 64
)

type sessionKey struct {
	server string
	client uint64
}

type sessionState struct {
	expires time.Time
	ended   bool
}

// sessionIndex holds the sessions this instance has seen in credential
// records (granted here or read from KV) and whether each has ended. Only
// those are tracked, so its size is bounded by the sessions the records name.
type sessionIndex struct {
	mu sync.Mutex
	m  map[sessionKey]sessionState
}

// add indexes the sessions of a record; an ended mark is kept.
func (x *sessionIndex) add(refs []SessionRef) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.m == nil {
		x.m = map[sessionKey]sessionState{}
	}
	for _, r := range refs {
		k := sessionKey{r.Server, r.Client}
		st := x.m[k]
		st.expires = r.Expires
		x.m[k] = st
	}
}

// end marks a session ended if it is indexed.
func (x *sessionIndex) end(server string, client uint64) bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	k := sessionKey{server, client}
	st, ok := x.m[k]
	if ok {
		st.ended = true
		x.m[k] = st
	}
	return ok
}

// endServer marks every session on a server ended (it shut down).
func (x *sessionIndex) endServer(server string) int {
	x.mu.Lock()
	defer x.mu.Unlock()
	n := 0
	for k, st := range x.m {
		if k.server == server && !st.ended {
			st.ended = true
			x.m[k] = st
			n++
		}
	}
	return n
}

func (x *sessionIndex) ended(r SessionRef) bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.m[sessionKey{r.Server, r.Client}].ended
}

// sweep forgets sessions past their expiry: no record keeps them.
func (x *sessionIndex) sweep(now time.Time) {
	x.mu.Lock()
	defer x.mu.Unlock()
	for k, st := range x.m {
		if !st.expires.After(now) {
			delete(x.m, k)
		}
	}
}

func (x *sessionIndex) len() int {
	x.mu.Lock()
	defer x.mu.Unlock()
	return len(x.m)
}

// liveSessions keeps the sessions that have neither expired nor ended, the
// newest maxSessions-1 of them (room for the one being added).
func (v *Verifier) liveSessions(s []SessionRef, now time.Time) []SessionRef {
	out := s[:0]
	for _, r := range s {
		if r.Expires.After(now) && !v.sessions.ended(r) {
			out = append(out, r)
		}
	}
	if len(out) >= maxSessions {
		v.log.Warn("credential has more live sessions than are kept for kicks; the oldest are dropped",
			"kept", maxSessions)
		out = out[len(out)-maxSessions+1:]
	}
	return out
}

// sysEvent is the part of a server's disconnect or shutdown event used here.
type sysEvent struct {
	Server struct {
		ID string `json:"id"`
	} `json:"server"`
	Client struct {
		ID uint64 `json:"id"`
	} `json:"client"`
}

// watchSessions follows the servers' disconnect and shutdown events (system
// account) and forgets old sessions periodically.
func (v *Verifier) watchSessions() error {
	onDisconnect := func(m *nats.Msg) {
		var e sysEvent
		if json.Unmarshal(m.Data, &e) != nil || e.Server.ID == "" {
			return
		}
		v.sessions.end(e.Server.ID, e.Client.ID)
	}
	onShutdown := func(m *nats.Msg) {
		var e sysEvent
		if json.Unmarshal(m.Data, &e) != nil || e.Server.ID == "" {
			return
		}
		if n := v.sessions.endServer(e.Server.ID); n > 0 {
			v.log.Info("server shut down: its sessions end", "server", e.Server.ID, "sessions", n)
		}
	}
	for subj, h := range map[string]nats.MsgHandler{disconnectSubject: onDisconnect, shutdownSubject: onShutdown} {
		if _, err := v.sysNC.Subscribe(subj, h); err != nil {
			return fmt.Errorf("subscribe %s: %w", subj, err)
		}
	}
	v.wg.Add(1)
	go func() {
		defer v.wg.Done()
		t := time.NewTicker(sessionSweep)
		defer t.Stop()
		for {
			select {
			case now := <-t.C:
				v.sessions.sweep(now)
			case <-v.done:
				return
			}
		}
	}()
	return nil
}
