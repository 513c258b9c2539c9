// Package sessions keeps track of the NATS sessions the verifier granted
// and ends them: the index of which sessions are still live (from the
// servers' disconnect and shutdown events), the audit of each session's end,
// kicks ($SYS.REQ.SERVER.<id>.KICK), and the watch that kicks a credential's
// sessions whenever any instance takes it out of service.
//
// The sessions a credential record names are rewritten with it on every
// connect and are what a revocation kicks. Without knowing which of them have
// ended, the list only shrinks as their JWTs expire: a workload that
// reconnects often carries up to MaxPerCredential dead entries in every write
// (an 8 KB record, measured in the connect benchmark) and a live connection
// beyond the cap escapes the kick. The servers' disconnect and shutdown
// events say which have ended; the next write of the record leaves them out.
//
// Only an event from the server itself ends a session: a missed or
// unreadable event, or a session this instance has not seen, leaves the
// session in the record (kicked in vain at worst), never the other way round.
package sessions

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/audit"
	"github.com/tpmauthn/tpmauthn/verifier/fleet"
	"github.com/tpmauthn/tpmauthn/verifier/keys"
	"github.com/tpmauthn/tpmauthn/verifier/record"
	"github.com/tpmauthn/tpmauthn/verifier/store"
)

type recorder interface{ Record(audit.Event) }

// Config is what Sessions needs.
type Config struct {
	Sys   *nats.Conn   // system-account connection: events and kicks
	Fleet *fleet.Fleet // credentials, cached and in KV
	Trail recorder
	// Only, if set, is the one server whose sessions can be live (the
	// embedded server, standalone, restarts with this process): sessions
	// on any other server are from before it started.
	Only   string
	Logger *slog.Logger
	// QueueGroup shares the audit of session ends among verifier instances.
	QueueGroup string
}

// Sessions is the session index with its watches; Start starts them and
// Close stops them.
type Sessions struct {
	cfg       Config
	log       *slog.Logger
	index     sessionIndex
	capWarned atomic.Int64 // unix time of the last too-many-sessions warning
	decoded   decodedEvents
	servers   knownServers // callout issuers (KnownServer)
	subs      []*nats.Subscription
	revWatch  jetstream.KeyWatcher
	done      chan struct{}
	closeOnce sync.Once
	wg        sync.WaitGroup
}

// New makes the index; nothing runs until Start.
func New(cfg Config) *Sessions {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Sessions{cfg: cfg, log: log, done: make(chan struct{})}
}

// Start follows the servers' disconnect and shutdown events and the
// credentials bucket, and forgets old sessions periodically, until Close.
func (s *Sessions) Start(ctx context.Context) error {
	if err := s.watchEvents(); err != nil {
		return err
	}
	return s.watchRevocations(ctx)
}

// Close stops the watches and waits for the goroutines it started. The
// event subscriptions are drained, not dropped: events already received are
// still handled (audited) while the owner drains the system connection.
// Kicks after Close do nothing (other instances kick).
func (s *Sessions) Close() {
	s.closeOnce.Do(func() {
		close(s.done)
		for _, sub := range s.subs {
			_ = sub.Drain()
		}
		if s.revWatch != nil {
			_ = s.revWatch.Stop()
		}
		s.wg.Wait()
	})
}

// Add indexes the sessions of a record read from KV (other instances'
// grants too); an ended mark is kept.
func (s *Sessions) Add(refs []record.SessionRef) { s.index.add(refs) }

// Granted indexes a session this instance granted to credential cred.
func (s *Sessions) Granted(r record.SessionRef, cred string) { s.index.granted(r, cred) }

// Forget drops ended sessions a record write has left out.
func (s *Sessions) Forget(refs []record.SessionRef) { s.index.forget(refs) }

// Live keeps the sessions that have neither expired nor ended, the
// newest MaxPerCredential-1 of them (room for the one being added), and returns
// the ended ones it left out (to forget once the record is written).
func (s *Sessions) Live(refs []record.SessionRef, now time.Time) (live, ended []record.SessionRef) {
	live, ended = s.index.split(refs, now, s.cfg.Only)
	if len(live) >= MaxPerCredential {
		if last := s.capWarned.Load(); now.Unix()-last >= 60 && s.capWarned.CompareAndSwap(last, now.Unix()) {
			s.log.Warn("a credential has more live sessions than are kept for kicks; the oldest are dropped from its record",
				"kept", MaxPerCredential)
		}
		live = live[len(live)-MaxPerCredential+1:]
	}
	return live, ended
}

// ErrClosing: this instance is shutting down (its system connection
// drained) and kicks nothing. It is an error, not "nothing to kick": a
// regroup then leaves its change unfinished, for another instance's sweep
// (verifier/offboard), and a revocation says its kick did not happen
// here (every other instance's revocation watch kicks as well).
var ErrClosing = fmt.Errorf("%w: this verifier is shutting down and kicks nothing more", api.ErrUnavailable)

// kickTimeout bounds one KICK request to a server.
const kickTimeout = time.Second

// Kick disconnects the live sessions of a credential, each on the server
// that holds it ($SYS.REQ.SERVER.<id>.KICK). A session already gone is not
// an error.
func (s *Sessions) Kick(c *record.Credential) (int, error) {
	select {
	case <-s.done:
		return 0, ErrClosing
	default:
	}
	now := time.Now()
	n := 0
	var failed []error
	for _, r := range c.Sessions {
		if !r.Expires.After(now) {
			continue
		}
		kicked, err := s.kickOne(r.Server, r.Client)
		if err != nil {
			s.log.Warn("kick failed", "credential", c.ID, "server", r.Server, "client", r.Client, "error", err)
			failed = append(failed, fmt.Errorf("server %s client %d: %w", r.Server, r.Client, err))
			continue
		}
		if kicked {
			n++
		}
	}
	if n > 0 {
		s.log.Info("live sessions kicked", "credential", c.ID, "count", n)
	}
	return n, errors.Join(failed...)
}

// watchRevocations kicks sessions whenever a credential leaves the active
// state, whichever verifier instance (or operator tool) changed it.
func (s *Sessions) watchRevocations(ctx context.Context) error {
	// The watch outlives ctx (a caller's deadline for starting up): a
	// revocation must be kicked for as long as the verifier runs.
	w, err := s.cfg.Fleet.Store.Credentials.WatchAll(context.WithoutCancel(ctx), jetstream.UpdatesOnly())
	if err != nil {
		return fmt.Errorf("watch credentials: %w", err)
	}
	s.revWatch = w
	s.wg.Go(func() {
		for e := range w.Updates() {
			if e == nil || e.Operation() != jetstream.KeyValuePut {
				continue
			}
			// Every connect writes its credential (counter, session), and the
			// watch brings each write back. A revision this instance cached is
			// its own connect's write of an active credential: skip it
			// undecoded; others decode their status first, the rest only
			// when it is not active.
			if rev, ok := s.cfg.Fleet.CachedRevision(e.Key()); ok && rev == e.Revision() {
				continue
			}
			var st struct {
				Status api.CredentialStatus `json:"status"`
			}
			if json.Unmarshal(e.Value(), &st) != nil || st.Status == api.CredentialActive {
				continue
			}
			var c record.Credential
			if json.Unmarshal(e.Value(), &c) != nil {
				continue
			}
			_, _ = s.Kick(&c) // failures are logged; the revoking instance reports them
		}
	})
	return nil
}

const (
	disconnectSubject = "$SYS.ACCOUNT." + keys.AccountApp + ".DISCONNECT"
	shutdownSubject   = "$SYS.SERVER.*.SHUTDOWN"
	// sessionSweep is how often sessions past their expiry are forgotten.
	sessionSweep = time.Minute
	// MaxPerCredential bounds the sessions kept per credential (the
	// record's size).
	MaxPerCredential = 64
)

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
func (s *Sessions) auditSessionEnd(e *disconnectEvent) {
	credID := s.index.grantOf(e.Server.ID, e.Client.ID)
	user := e.Client.User
	if credID == "" {
		credID = nkeyOf(user) // workload@hostname/nkey (UserName)
	}
	if credID == "" && user != "" && !strings.ContainsAny(user, ":[]@ ") {
		credID = user // a bare nkey; enrollment users have a prefix
	}
	ev := s.sessionEvent(credID, e.Server.ID, e.Client.ID, e.Reason)
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
	s.cfg.Trail.Record(ev)
}

// sessionEvent is the audit event of a session's end, naming its host and
// workload from the credential (cached, or read).
func (s *Sessions) sessionEvent(credID, server string, client uint64, reason string) audit.Event {
	ev := audit.Event{Kind: "disconnect", Result: "ok", Credential: credID, Server: server, Client: client, Reason: reason}
	if credID == "" {
		return ev
	}
	if c := s.cfg.Fleet.PeekCredential(credID); c != nil {
		ev.Host, ev.Workload = c.Host, c.Workload
	} else {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if c, _, err := store.Get[record.Credential](ctx, s.cfg.Fleet.Store.Credentials, credID); err == nil {
			ev.Host, ev.Workload = c.Host, c.Workload
		}
	}
	return ev
}

// watchSessions follows the servers' disconnect and shutdown events (system
// account) and forgets old sessions periodically.
func (s *Sessions) watchEvents() error {
	sub, err := s.cfg.Sys.Subscribe(disconnectSubject, func(m *nats.Msg) {
		if e := s.decoded.get(m.Data); e != nil {
			s.index.end(e.Server.ID, e.Client.ID)
		}
	})
	if err != nil {
		return fmt.Errorf("subscribe %s: %w", disconnectSubject, err)
	}
	s.subs = append(s.subs, sub)
	sub, err = s.cfg.Sys.QueueSubscribe(disconnectSubject, s.cfg.QueueGroup, func(m *nats.Msg) {
		if e := s.decoded.get(m.Data); e != nil {
			s.auditSessionEnd(e)
		}
	})
	if err != nil {
		return fmt.Errorf("subscribe %s: %w", disconnectSubject, err)
	}
	s.subs = append(s.subs, sub)
	// A shutting-down server sends no disconnect events for its clients,
	// only this, its body the bare server info: the ID is in the subject.
	sub, err = s.cfg.Sys.Subscribe(shutdownSubject, func(m *nats.Msg) {
		tok := strings.Split(m.Subject, ".")
		if len(tok) != 4 || tok[2] == "" {
			return
		}
		n, granted := s.index.endServer(tok[2])
		if n > 0 {
			s.log.Info("server shut down: its sessions end", "server", tok[2], "sessions", n)
		}
		// The server sends no disconnect event for them: their end is
		// audited here, without the traffic counts.
		for client, credID := range granted {
			s.cfg.Trail.Record(s.sessionEvent(credID, tok[2], client, "Server Shutdown"))
		}
	})
	if err != nil {
		return fmt.Errorf("subscribe %s: %w", shutdownSubject, err)
	}
	s.subs = append(s.subs, sub)
	s.wg.Go(func() {
		t := time.NewTicker(sessionSweep)
		defer t.Stop()
		for {
			select {
			case now := <-t.C:
				s.index.sweep(now)
			case <-s.done:
				return
			}
		}
	})
	return nil
}
