package verifier

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

func TestSessionIndex(t *testing.T) {
	now := time.Now()
	ref := func(server string, client uint64, ttl time.Duration) SessionRef {
		return SessionRef{Server: server, Client: client, Expires: now.Add(ttl)}
	}
	a1, a2, b1 := ref("NA", 1, time.Hour), ref("NA", 2, time.Hour), ref("NB", 1, time.Minute)
	gone := ref("NA", 3, -time.Second)
	var x sessionIndex
	if known, _ := x.end("NA", 1); known {
		t.Fatal("end of a session never indexed reported as known")
	}
	x.add([]SessionRef{a1, a2, b1})
	if known, g := x.end("NA", 1); !known || g != "" || !x.ended(a1) || x.ended(a2) || x.ended(b1) {
		t.Fatal("end marked the wrong sessions, or named a grant not made here")
	}
	x.add([]SessionRef{a1}) // re-reading a record keeps the mark
	if !x.ended(a1) {
		t.Fatal("re-indexing a session lost its ended mark")
	}
	live, ended := x.split([]SessionRef{a1, a2, b1, gone, ref("NC", 9, time.Hour)}, now, "")
	if len(live) != 3 || live[0] != a2 || live[1] != b1 || len(ended) != 1 || ended[0] != a1 {
		t.Fatalf("split: live %v, ended %v; want a2, b1 and the unindexed NC/9 live, a1 ended", live, ended)
	}
	if live, _ := x.split([]SessionRef{a2, b1}, now, "NB"); len(live) != 1 || live[0] != b1 {
		t.Fatalf("split with one server NB: live %v, want only its session", live)
	}
	x.forget([]SessionRef{a1, a2}) // a2 is live: kept
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

// The end of a session granted here names its grant, once.
func TestSessionIndexGrant(t *testing.T) {
	r := SessionRef{Server: "NA", Client: 4, Expires: time.Now().Add(time.Hour)}
	g := "cred-1"
	var x sessionIndex
	x.granted(r, g)
	x.add([]SessionRef{r}) // the record read back keeps the grant
	if _, got := x.end("NA", 4); got != g {
		t.Fatalf("end named grant %v, want %v", got, g)
	}
	if _, again := x.end("NA", 4); again != "" {
		t.Fatal("a second end event named the grant again (it would be audited twice)")
	}
}

func (x *sessionIndex) isIndexed(r SessionRef) bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	_, ok := x.m[r.Server][r.Client]
	return ok
}

// TestShutdownEventEndsSessions: a server's shutdown event (its body the
// bare server info, as nats-server sends it) ends its sessions and no
// other server's.
func TestShutdownEventEndsSessions(t *testing.T) {
	v, err := New(Config{DataDir: t.TempDir(), NATSListen: "127.0.0.1:-1"})
	if err != nil {
		t.Fatal(err)
	}
	if err := v.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	exp := time.Now().Add(time.Hour)
	gone, other := SessionRef{Server: "NGONE", Client: 7, Expires: exp}, SessionRef{Server: "NOTHER", Client: 7, Expires: exp}
	v.sessions.add([]SessionRef{gone, other})
	mine := SessionRef{Server: "NGONE", Client: 8, Expires: exp}
	v.sessions.granted(mine, "cred-x")
	body, _ := json.Marshal(&server.ServerInfo{Name: "gone", ID: "NGONE", Seq: 9, Time: time.Now()})
	if err := v.sysNC.Publish("$SYS.SERVER.NGONE.SHUTDOWN", body); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Second); !v.sessions.ended(gone); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the shutdown event did not end the server's session")
		}
	}
	if v.sessions.ended(other) {
		t.Fatal("another server's session was ended")
	}
	// The session granted here gets its end audited (the server sends no
	// disconnect event for it).
	var last Event
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		v.FlushAudit()
		info, err := v.audit.stream.Info(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		raws, err := v.audit.readRaw(t.Context(), info.State.LastSeq, maxAuditBatch)
		if err == nil && len(raws) > 0 && json.Unmarshal(raws[len(raws)-1].Data, &last) == nil && last.Kind == "disconnect" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no disconnect event audited for the granted session; last event %+v", last)
		}
	}
	if last.Credential != "cred-x" || last.Client != 8 || last.Server != "NGONE" || last.Reason != "Server Shutdown" {
		t.Fatalf("last audit event %+v: want the shutdown's end of cred-x's session 8", last)
	}
}
