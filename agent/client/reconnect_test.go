package client

import (
	"encoding/base64"
	"encoding/json"
	"net"
	"net/http"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"
	"github.com/tpmauthn/tpmauthn/api"
)

// turnAgent is an agent on a Unix socket that signs nonces with an nkey,
// gives the first turn at once and holds every later one, as an agent
// does in a storm, until its client leaves.
type turnAgent struct {
	socket string
	turns  atomic.Int32 // turn requests received
	open   atomic.Int32 // turn requests being held
}

func startTurnAgent(t *testing.T, kp nkeys.KeyPair) *turnAgent {
	t.Helper()
	pub, err := kp.PublicKey()
	if err != nil {
		t.Fatal(err)
	}
	a := &turnAgent{socket: filepath.Join(t.TempDir(), "agent.sock")}
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+api.AgentPathWhoAmI, func(w http.ResponseWriter, _ *http.Request) {
		_ = json.NewEncoder(w).Encode(api.WhoAmI{Workload: "w", Host: "h", NKey: pub})
	})
	mux.HandleFunc("POST "+api.AgentPathNATSSign, func(w http.ResponseWriter, r *http.Request) {
		var req api.NATSSignRequest
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		sig, err := kp.Sign([]byte(req.Nonce))
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		_ = json.NewEncoder(w).Encode(api.NATSSignResponse{NKey: pub, Sig: base64.RawURLEncoding.EncodeToString(sig)})
	})
	mux.HandleFunc("POST "+api.AgentPathNATSTurn, func(w http.ResponseWriter, r *http.Request) {
		if a.turns.Add(1) == 1 {
			w.WriteHeader(http.StatusNoContent)
			return
		}
		a.open.Add(1)
		defer a.open.Add(-1)
		select {
		case <-r.Context().Done():
		case <-time.After(time.Minute):
		}
		w.WriteHeader(http.StatusServiceUnavailable)
	})
	ln, err := net.Listen("unix", a.socket)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: mux}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return a
}

// reconnectGoroutines counts goroutines in a reconnect's delay or loop.
func reconnectGoroutines() int {
	buf := make([]byte, 1<<20)
	st := string(buf[:runtime.Stack(buf, true)])
	n := 0
	for _, g := range strings.Split(st, "\n\n") {
		if strings.Contains(g, "(*Client).reconnectDelay") || strings.Contains(g, "(*Conn).doReconnect") {
			n++
		}
	}
	return n
}

// waitFor polls cond until it holds or max passes.
func waitFor(max time.Duration, cond func() bool) bool {
	for end := time.Now().Add(max); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		if cond() {
			return true
		}
	}
	return cond()
}

// TestCloseEndsReconnectDelay: a connection closed while it waits to
// reconnect (in its delay, or for a turn at the agent) stops waiting: no
// goroutine of it lingers, no turn request is left open at the agent, none
// is sent after Close, and the workload's own closed handler still runs.
func TestCloseEndsReconnectDelay(t *testing.T) {
	for _, tc := range []struct {
		name   string
		inTurn bool // close once a turn request is open; else during the delay
	}{
		{"in-delay", false},
		{"in-turn", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			kp, err := nkeys.CreateUser()
			if err != nil {
				t.Fatal(err)
			}
			pub, _ := kp.PublicKey()
			agent := startTurnAgent(t, kp)
			ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, NoLog: true, NoSigs: true,
				Nkeys: []*server.NkeyUser{{Nkey: pub}}})
			if err != nil {
				t.Fatal(err)
			}
			go ns.Start()
			if !ns.ReadyForConnections(5 * time.Second) {
				t.Fatal("nats-server not ready")
			}
			disconnected := make(chan struct{}, 1)
			var closed atomic.Bool
			nc, err := Connect(t.Context(), agent.socket, ns.ClientURL(),
				nats.DisconnectErrHandler(func(*nats.Conn, error) { disconnected <- struct{}{} }),
				nats.ClosedHandler(func(*nats.Conn) { closed.Store(true) }))
			if err != nil {
				t.Fatal(err)
			}
			ns.Shutdown()
			<-disconnected
			if tc.inTurn && !waitFor(10*time.Second, func() bool { return agent.open.Load() == 1 }) {
				t.Fatal("no turn request reached the agent after the disconnect")
			}
			nc.Close()
			turns := agent.turns.Load()
			if !waitFor(5*time.Second, func() bool { return reconnectGoroutines() == 0 && agent.open.Load() == 0 }) {
				t.Fatalf("after Close: %d reconnect goroutines, %d turn requests open at the agent", reconnectGoroutines(), agent.open.Load())
			}
			if got := agent.turns.Load(); got != turns {
				t.Fatalf("%d turn requests sent after Close", got-turns)
			}
			if !waitFor(5*time.Second, closed.Load) {
				t.Fatal("the workload's closed handler did not run")
			}
		})
	}
}
