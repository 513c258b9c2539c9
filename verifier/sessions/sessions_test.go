package sessions

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/audit"
	"github.com/tpmauthn/tpmauthn/internal/eventually"
	"github.com/tpmauthn/tpmauthn/verifier/internal/testenv"
	"github.com/tpmauthn/tpmauthn/verifier/keys"
	"github.com/tpmauthn/tpmauthn/verifier/record"
	"github.com/tpmauthn/tpmauthn/verifier/store"
)

func TestSessionIndex(t *testing.T) {
	now := time.Now()
	ref := func(server string, client uint64, ttl time.Duration) record.SessionRef {
		return record.SessionRef{Server: server, Client: client, Expires: now.Add(ttl)}
	}
	a1, a2, b1 := ref("NA", 1, time.Hour), ref("NA", 2, time.Hour), ref("NB", 1, time.Minute)
	gone := ref("NA", 3, -time.Second)
	var x sessionIndex
	if x.end("NA", 1) {
		t.Fatal("end of a session never indexed reported as known")
	}
	x.add([]record.SessionRef{a1, a2, b1})
	if !x.end("NA", 1) || x.grantOf("NA", 1) != "" || !x.ended(a1) || x.ended(a2) || x.ended(b1) {
		t.Fatal("end marked the wrong sessions, or a grant not made here is named")
	}
	x.add([]record.SessionRef{a1}) // re-reading a record keeps the mark
	if !x.ended(a1) {
		t.Fatal("re-indexing a session lost its ended mark")
	}
	live, ended := x.split([]record.SessionRef{a1, a2, b1, gone, ref("NC", 9, time.Hour)}, now, "")
	if len(live) != 3 || live[0] != a2 || live[1] != b1 || len(ended) != 1 || ended[0] != a1 {
		t.Fatalf("split: live %v, ended %v; want a2, b1 and the unindexed NC/9 live, a1 ended", live, ended)
	}
	if live, _ := x.split([]record.SessionRef{a2, b1}, now, "NB"); len(live) != 1 || live[0] != b1 {
		t.Fatalf("split with one server NB: live %v, want only its session", live)
	}
	x.forget([]record.SessionRef{a1, a2}) // a2 is live: kept
	if x.len() != 2 || x.ended(a1) || !x.isIndexed(a2) {
		t.Fatalf("after forget: %d indexed, want a2 and b1", x.len())
	}
	if n, granted := x.endServer("NB"); n != 1 || len(granted) != 0 || !x.ended(b1) || x.ended(a2) {
		t.Fatalf("endServer(NB) ended %d sessions", n)
	}
	x.sweep(now.Add(90 * time.Second)) // b1 expired 30 s ago: its disconnect event may still come
	if x.len() != 2 {
		t.Fatalf("a sweep right after b1's expiry left %d sessions, want 2", x.len())
	}
	x.sweep(now.Add(3 * time.Minute))
	if x.len() != 1 || x.ended(b1) {
		t.Fatalf("after the sweep %d sessions indexed, want the unexpired a2", x.len())
	}
}

// A session granted here names its credential, also once it has ended.
func TestSessionIndexGrant(t *testing.T) {
	r := record.SessionRef{Server: "NA", Client: 4, Expires: time.Now().Add(time.Hour)}
	var x sessionIndex
	x.granted(r, "cred-1")
	x.add([]record.SessionRef{r}) // the record read back keeps the grant
	x.end("NA", 4)
	if got := x.grantOf("NA", 4); got != "cred-1" {
		t.Fatalf("grantOf = %q, want cred-1", got)
	}
}

func (x *sessionIndex) ended(r record.SessionRef) bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.m[r.Server][r.Client].ended
}

func (x *sessionIndex) len() int {
	x.mu.Lock()
	defer x.mu.Unlock()
	n := 0
	for _, clients := range x.m {
		n += len(clients)
	}
	return n
}

func (x *sessionIndex) isIndexed(r record.SessionRef) bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	_, ok := x.m[r.Server][r.Client]
	return ok
}

// TestShutdownEventEndsSessions: a server's shutdown event (its body the
// bare server info, as nats-server sends it) ends its sessions and no
// other server's.
func TestShutdownEventEndsSessions(t *testing.T) {
	e, s := start(t)
	exp := time.Now().Add(time.Hour)
	gone, other := record.SessionRef{Server: "NGONE", Client: 7, Expires: exp}, record.SessionRef{Server: "NOTHER", Client: 7, Expires: exp}
	s.Add([]record.SessionRef{gone, other})
	mine := record.SessionRef{Server: "NGONE", Client: 8, Expires: exp}
	s.Granted(mine, "cred-x")
	body, _ := json.Marshal(&server.ServerInfo{Name: "gone", ID: "NGONE", Seq: 9, Time: time.Now()})
	if err := e.NC.Publish("$SYS.SERVER.NGONE.SHUTDOWN", body); err != nil {
		t.Fatal(err)
	}
	eventually.Until(t, 5*time.Second, func() error {
		if !s.index.ended(gone) {
			return errors.New("the shutdown event did not end the server's session")
		}
		return nil
	})
	if s.index.ended(other) {
		t.Fatal("another server's session was ended")
	}
	// The session granted here gets its end audited (the server sends no
	// disconnect event for it).
	var last audit.Event
	eventually.Until(t, 5*time.Second, func() error {
		var err error
		if last, err = e.LastEvent(t); err == nil && last.Kind != "disconnect" {
			err = fmt.Errorf("no disconnect event audited for the granted session; last event %+v", last)
		}
		return err
	})
	if last.Credential != "cred-x" || last.Client != 8 || last.Server != "NGONE" || last.Reason != "Server Shutdown" {
		t.Fatalf("last audit event %+v: want the shutdown's end of cred-x's session 8", last)
	}
}

// TestSessionEndFromAnotherInstance: the end of a session this instance did
// not grant (another instance did, or this one before a restart) is audited
// from the server's event alone, as nats-server writes it: the CONNECT nkey
// names the credential; an enrollment user names the host.
func TestSessionEndFromAnotherInstance(t *testing.T) {
	e, _ := start(t)
	if err := store.Create(t.Context(), e.Store.Credentials, "CRED1", &record.Credential{V: record.Version, ID: "CRED1", Host: "h-1", Workload: "billing", Status: api.CredentialActive}); err != nil {
		t.Fatal(err)
	}
	start := time.Now().Add(-time.Minute)
	publish := func(cid uint64, user string) {
		ev := server.DisconnectEventMsg{
			Client:   server.ClientInfo{Start: &start, Host: "10.0.0.7", ID: cid, Account: keys.AccountApp, User: user},
			Sent:     server.DataStats{MsgBytes: server.MsgBytes{Msgs: 5, Bytes: 500}},
			Received: server.DataStats{MsgBytes: server.MsgBytes{Msgs: 2, Bytes: 20}},
			Reason:   "Client Closed",
		}
		ev.Server.ID = "NOTHER"
		body, _ := json.Marshal(&ev)
		if err := e.NC.Publish(disconnectSubject, body); err != nil {
			t.Fatal(err)
		}
	}
	publish(11, "CRED1")
	publish(12, api.HostUserPrefix+"h-2")
	publish(13, "[REDACTED]")
	var ends []audit.Event
	eventually.Until(t, 5*time.Second, func() error {
		ends = ends[:0]
		for _, ev := range e.Events(t) {
			if ev.Kind == "disconnect" {
				ends = append(ends, ev)
			}
		}
		if len(ends) < 3 {
			return fmt.Errorf("%d of 3 session ends audited", len(ends))
		}
		return nil
	})
	slices.SortFunc(ends, func(a, b audit.Event) int { return int(a.Client) - int(b.Client) })
	w := ends[0]
	if w.Credential != "CRED1" || w.Host != "h-1" || w.Workload != "billing" || w.ClientAddr != "10.0.0.7" ||
		w.Session == nil || w.Session.MsgsSent != 5 || w.Session.BytesReceived != 20 || !w.Session.Start.Equal(start.UTC()) {
		t.Fatalf("workload session end: %+v %+v", w, w.Session)
	}
	if h := ends[1]; h.Host != "h-2" || h.Credential != "" || h.Reason != "Client Closed (enrollment session, host proof)" {
		t.Fatalf("host enrollment session end: %+v", h)
	}
	if tok := ends[2]; tok.Host != "" || tok.Credential != "" || tok.Reason != "Client Closed (enrollment session, join token)" {
		t.Fatalf("join token session end: %+v", tok)
	}
}

// Both disconnect subscriptions get each event; it is decoded once, the
// second gets the same decoded event, and what nobody takes is evicted.
func TestDecodedEventsOncePerEvent(t *testing.T) {
	var d decodedEvents
	ev := func(client int) []byte {
		return fmt.Appendf(nil, `{"server":{"id":"NSRV"},"client":{"id":%d,"user":"cred"},"reason":"Client Closed"}`, client)
	}
	a := d.get(ev(1))
	b := d.get(slices.Clone(ev(1))) // the other subscription's copy
	if a == nil || a != b || a.Client.ID != 1 || a.Reason != "Client Closed" {
		t.Fatalf("first %+v, second %+v: want one decoded event", a, b)
	}
	if c := d.get(ev(1)); c == a {
		t.Fatal("an event taken by both subscriptions was handed out a third time")
	}
	for i := range 3 * decodedKeep {
		d.get(ev(100 + i)) // taken by one subscription only
	}
	if n := len(d.m); n > decodedKeep {
		t.Fatalf("%d decoded events kept, want at most %d", n, decodedKeep)
	}
	for _, bad := range []string{`{`, `{"server":{"id":""},"client":{"id":3}}`, `{"server":{"id":"N"},"client":{"id":0}}`} {
		if e := d.get([]byte(bad)); e != nil {
			t.Fatalf("%s decoded as %+v", bad, e)
		}
	}
}

// start runs Sessions on a test server; its connection stands in for the
// system account's (the tests publish the servers' events themselves).
func start(t *testing.T) (*testenv.Env, *Sessions) {
	t.Helper()
	e := testenv.New(t)
	s := New(Config{Sys: e.NC, Fleet: e.Fleet, Trail: e.Trail, QueueGroup: "tpmauthn"})
	if err := s.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	if err := e.NC.Flush(); err != nil {
		t.Fatal(err)
	}
	return e, s
}

// A closing instance kicks nothing and says so (found by review): it
// returned "0 kicked, no error", and a regroup during shutdown recorded its
// change as done with the sessions still up.
func TestKickWhileClosingIsAnError(t *testing.T) {
	_, s := start(t)
	s.Close()
	c := &record.Credential{ID: "c1", Sessions: []record.SessionRef{{Server: "S", Client: 1, Expires: time.Now().Add(time.Hour)}}}
	if _, err := s.Kick(c); !errors.Is(err, ErrClosing) || !errors.Is(err, api.ErrUnavailable) {
		t.Fatalf("Kick while closing: %v, want ErrClosing", err)
	}
	if _, err := s.KickUser("w@h/UX"); !errors.Is(err, ErrClosing) {
		t.Fatalf("KickUser while closing: %v, want ErrClosing", err)
	}
}
