package sessions

import (
	"sync"
	"time"

	"github.com/tpmauthn/tpmauthn/verifier/record"
)

// sessionState is kept small (one per indexed session: 100,000 at the scale
// benchmark): expiry in Unix seconds, and the credential only for sessions
// this instance granted (the string is the cached record's, not a copy).
type sessionState struct {
	expires int64
	ended   bool
	cred    string // set where this instance granted the session
}

// sessionIndex holds the sessions this instance has seen in credential
// records (granted here or read from KV), by server and client ID, and
// whether each has ended. An ended session is forgotten once a record write
// has dropped it, the rest at their expiry: the index holds about the live
// sessions of the records this instance writes.
type sessionIndex struct {
	mu sync.Mutex
	m  map[string]map[uint64]sessionState // server ID -> client ID -> state
}

// granted indexes a session this instance granted to credential cred (on
// every connect: one lock, nothing allocated for a known server).
func (x *sessionIndex) granted(r record.SessionRef, cred string) {
	x.mu.Lock()
	defer x.mu.Unlock()
	clients := x.clients(r.Server)
	st := clients[r.Client]
	st.expires, st.cred = r.Expires.Unix(), cred
	clients[r.Client] = st
}

// add indexes the sessions of a record; an ended mark is kept.
func (x *sessionIndex) add(refs []record.SessionRef) {
	x.mu.Lock()
	defer x.mu.Unlock()
	for _, r := range refs {
		clients := x.clients(r.Server)
		st := clients[r.Client]
		st.expires = r.Expires.Unix()
		clients[r.Client] = st
	}
}

// clients is a server's sessions, made if need be. Called with x.mu held.
func (x *sessionIndex) clients(server string) map[uint64]sessionState {
	if x.m == nil {
		x.m = map[string]map[uint64]sessionState{}
	}
	c := x.m[server]
	if c == nil {
		c = map[uint64]sessionState{}
		x.m[server] = c
	}
	return c
}

// end marks a session ended if it is indexed.
func (x *sessionIndex) end(server string, client uint64) bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	st, ok := x.m[server][client]
	if ok {
		st.ended = true
		x.m[server][client] = st
	}
	return ok
}

// grantOf is the credential a session was granted to, if this instance
// granted it and still indexes it.
func (x *sessionIndex) grantOf(server string, client uint64) string {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.m[server][client].cred
}

// endServer marks every session on a server ended (it shut down).
// It returns how many it ended, and those this instance granted (client ID
// to credential).
func (x *sessionIndex) endServer(server string) (int, map[uint64]string) {
	x.mu.Lock()
	defer x.mu.Unlock()
	n := 0
	granted := map[uint64]string{}
	for c, st := range x.m[server] {
		if !st.ended {
			st.ended = true
			x.m[server][c] = st
			n++
			if st.cred != "" {
				granted[c] = st.cred
			}
		}
	}
	return n, granted
}

// split returns the sessions that have neither expired nor ended, and the
// ended ones. With only (non-empty) there is one server and only its
// sessions can be live: the others are from before it started.
func (x *sessionIndex) split(refs []record.SessionRef, now time.Time, only string) (live, ended []record.SessionRef) {
	x.mu.Lock()
	defer x.mu.Unlock()
	live = refs[:0:0]
	for _, r := range refs {
		switch {
		case !r.Expires.After(now):
		case only != "" && r.Server != only:
		case x.m[r.Server][r.Client].ended:
			ended = append(ended, r)
		default:
			live = append(live, r)
		}
	}
	return live, ended
}

// forget drops ended sessions a record write has left out.
func (x *sessionIndex) forget(refs []record.SessionRef) {
	x.mu.Lock()
	defer x.mu.Unlock()
	for _, r := range refs {
		clients := x.m[r.Server]
		if st, ok := clients[r.Client]; ok && st.ended {
			delete(clients, r.Client)
			if len(clients) == 0 {
				delete(x.m, r.Server)
			}
		}
	}
}

// sweep forgets sessions past their expiry: no record keeps them. It locks
// one server's sessions at a time, so callouts are not held up for long.
func (x *sessionIndex) sweep(now time.Time) {
	x.mu.Lock()
	servers := make([]string, 0, len(x.m))
	for s := range x.m {
		servers = append(servers, s)
	}
	x.mu.Unlock()
	for _, s := range servers {
		x.mu.Lock()
		for c, st := range x.m[s] {
			// A session ends at its expiry, and its disconnect event
			// arrives just after: keep it a sweep longer for that.
			if st.expires+int64(sessionSweep/time.Second) <= now.Unix() {
				delete(x.m[s], c)
			}
		}
		if len(x.m[s]) == 0 {
			delete(x.m, s)
		}
		x.mu.Unlock()
	}
}
