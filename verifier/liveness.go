package verifier

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"hash/maphash"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/audit"
	"github.com/tpmauthn/tpmauthn/verifier/keys"
	"github.com/tpmauthn/tpmauthn/verifier/record"
)

// The sessions a credential record names are rewritten with it on every
// connect and are what a revocation kicks. Without knowing which of them have
// ended, the list only shrinks as their JWTs expire: a workload that
// reconnects often carries up to maxSessions dead entries in every write
// (an 8 KB record, measured in the connect benchmark) and a live connection
// beyond the cap escapes the kick. The servers' disconnect and shutdown
// events say which have ended; the next write of the record leaves them out.
//
// Only an event from the server itself ends a session: a missed or
// unreadable event, or a session this instance has not seen, leaves the
// session in the record (kicked in vain at worst), never the other way round.

const (
	disconnectSubject = "$SYS.ACCOUNT." + keys.AccountApp + ".DISCONNECT"
	shutdownSubject   = "$SYS.SERVER.*.SHUTDOWN"
	// sessionSweep is how often sessions past their expiry are forgotten.
	sessionSweep = time.Minute
	// maxSessions bounds the sessions kept per credential (the record's
	// size).
	maxSessions = 64
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

// liveSessions keeps the sessions that have neither expired nor ended, the
// newest maxSessions-1 of them (room for the one being added), and returns
// the ended ones it left out (to forget once the record is written).
func (v *Verifier) liveSessions(s []record.SessionRef, now time.Time) (live, ended []record.SessionRef) {
	only := ""
	if v.srv != nil { // the embedded server, standalone: it restarts with this process
		only = v.srv.ID()
	}
	live, ended = v.sessions.split(s, now, only)
	if len(live) >= maxSessions {
		if last := v.capWarned.Load(); now.Unix()-last >= 60 && v.capWarned.CompareAndSwap(last, now.Unix()) {
			v.log.Warn("a credential has more live sessions than are kept for kicks; the oldest are dropped from its record",
				"kept", maxSessions)
		}
		live = live[len(live)-maxSessions+1:]
	}
	return live, ended
}

// disconnectEvent is the part of a server's client disconnect event
// (io.nats.server.advisory.v1.client_disconnect) used here.
type disconnectEvent struct {
	Server struct {
		ID string `json:"id"`
	} `json:"server"`
	Client struct {
		ID    uint64    `json:"id"`
		Host  string    `json:"host"`
		Start time.Time `json:"start"`
		// User is the CONNECT user: a workload's nkey (its credential's
		// lineage), a host or EK enrollment user name, or "[REDACTED]" for
		// a join token.
		User string `json:"user"`
	} `json:"client"`
	Sent     trafficCount `json:"sent"`
	Received trafficCount `json:"received"`
	Reason   string       `json:"reason"`
}

// decodedEvents decodes each disconnect event once for both subscriptions
// that receive it (every instance marks it; one audits it): decoding ~1.5 KB
// of JSON twice cost ~22 µs per session. The first to get an event decodes
// it and leaves it for the second; what no second subscription takes (the
// queue group chose another instance) is evicted after decodedKeep more.
type decodedEvents struct {
	mu   sync.Mutex
	seed maphash.Seed
	m    map[uint64]decodedEvent
	ring [decodedKeep]uint64
	next int
}

type decodedEvent struct {
	raw []byte
	e   *disconnectEvent
}

const decodedKeep = 1024

// get returns the event in data, decoded, or nil if it is not a disconnect
// event naming a server and client. The event is shared: read only.
func (d *decodedEvents) get(data []byte) *disconnectEvent {
	d.mu.Lock()
	if d.m == nil {
		d.seed, d.m = maphash.MakeSeed(), make(map[uint64]decodedEvent, decodedKeep)
	}
	h := maphash.Bytes(d.seed, data)
	if de, ok := d.m[h]; ok && bytes.Equal(de.raw, data) {
		delete(d.m, h)
		d.mu.Unlock()
		return de.e
	}
	d.mu.Unlock()
	e := new(disconnectEvent)
	if json.Unmarshal(data, e) != nil || e.Server.ID == "" || e.Client.ID == 0 {
		return nil
	}
	d.mu.Lock()
	delete(d.m, d.ring[d.next])
	d.m[h], d.ring[d.next] = decodedEvent{raw: data, e: e}, h
	d.next = (d.next + 1) % decodedKeep
	d.mu.Unlock()
	return e
}

type trafficCount struct {
	Msgs  int64 `json:"msgs"`
	Bytes int64 `json:"bytes"`
}

// auditSessionEnd records a session's end: when, why (the server's reason)
// and how much it sent and received. One verifier instance (queue group)
// gets each event, whichever granted the session and across restarts. The
// credential is the one granted where this instance did, otherwise the
// CONNECT nkey (the first credential of the rotation lineage).
func (v *Verifier) auditSessionEnd(e *disconnectEvent) {
	credID := v.sessions.grantOf(e.Server.ID, e.Client.ID)
	user := e.Client.User
	if credID == "" && user != "" && !strings.ContainsAny(user, ":[] ") {
		credID = user // a workload's nkey; enrollment users have a prefix
	}
	ev := v.sessionEvent(credID, e.Server.ID, e.Client.ID, e.Reason)
	if ev.Host == "" { // an enrollment session, or a credential since deleted
		ev.Credential = ""
		switch {
		case strings.HasPrefix(user, api.HostUserPrefix):
			ev.Host = strings.TrimPrefix(user, api.HostUserPrefix)
			ev.Reason += " (enrollment session, host proof)"
		case strings.HasPrefix(user, api.EKUserPrefix):
			ev.EKHash = strings.TrimPrefix(user, api.EKUserPrefix)
			ev.Reason += " (enrollment session, EK allow-list)"
		case user == "[REDACTED]": // nats-server's stand-in for a token
			ev.Reason += " (enrollment session, join token)"
		}
	}
	ev.ClientAddr = e.Client.Host
	ev.Session = &audit.SessionStats{Start: e.Client.Start.UTC(), MsgsSent: e.Sent.Msgs, BytesSent: e.Sent.Bytes,
		MsgsReceived: e.Received.Msgs, BytesReceived: e.Received.Bytes}
	v.audit.Record(ev)
}

// sessionEvent is the audit event of a session's end, naming its host and
// workload from the credential (cached, or read).
func (v *Verifier) sessionEvent(credID, server string, client uint64, reason string) audit.Event {
	ev := audit.Event{Kind: "disconnect", Result: "ok", Credential: credID, Server: server, Client: client, Reason: reason}
	if credID == "" {
		return ev
	}
	if c, ok := v.creds.peek(credID); ok {
		ev.Host, ev.Workload = c.Host, c.Workload
	} else {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if c, _, err := get[record.Credential](ctx, v.st.creds, credID); err == nil {
			ev.Host, ev.Workload = c.Host, c.Workload
		}
	}
	return ev
}

// watchSessions follows the servers' disconnect and shutdown events (system
// account) and forgets old sessions periodically.
func (v *Verifier) watchSessions() error {
	var decoded decodedEvents
	if _, err := v.sysNC.Subscribe(disconnectSubject, func(m *nats.Msg) {
		if e := decoded.get(m.Data); e != nil {
			v.sessions.end(e.Server.ID, e.Client.ID)
		}
	}); err != nil {
		return fmt.Errorf("subscribe %s: %w", disconnectSubject, err)
	}
	if _, err := v.sysNC.QueueSubscribe(disconnectSubject, queueGroup, func(m *nats.Msg) {
		if e := decoded.get(m.Data); e != nil {
			v.auditSessionEnd(e)
		}
	}); err != nil {
		return fmt.Errorf("subscribe %s: %w", disconnectSubject, err)
	}
	// A shutting-down server sends no disconnect events for its clients,
	// only this, its body the bare server info: the ID is in the subject.
	if _, err := v.sysNC.Subscribe(shutdownSubject, func(m *nats.Msg) {
		tok := strings.Split(m.Subject, ".")
		if len(tok) != 4 || tok[2] == "" {
			return
		}
		n, granted := v.sessions.endServer(tok[2])
		if n > 0 {
			v.log.Info("server shut down: its sessions end", "server", tok[2], "sessions", n)
		}
		// The server sends no disconnect event for them: their end is
		// audited here, without the traffic counts.
		for client, credID := range granted {
			v.audit.Record(v.sessionEvent(credID, tok[2], client, "Server Shutdown"))
		}
	}); err != nil {
		return fmt.Errorf("subscribe %s: %w", shutdownSubject, err)
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
