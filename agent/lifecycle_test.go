package agent

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/tpmauthn/tpmauthn/agent/tpm"
	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/attestation"
	"github.com/tpmauthn/tpmauthn/internal/swtpmtest"
)

// agentGoroutines lists the goroutines, other than the caller's, that run
// agent code: the queue's worker, the socket server, the rotation loop, the
// scheduled deletions, request handlers. Unlike goleak it does not retry:
// once Close returns there must be none, not merely none a moment later.
func agentGoroutines() []string {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	var out []string
	for i, g := range strings.Split(string(buf), "\n\n") {
		if i > 0 && strings.Contains(g, "tpmauthn/tpmauthn/agent.(*") {
			out = append(out, g)
		}
	}
	return out
}

// closedPort returns a loopback address nobody listens on.
func closedPort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	if err := ln.Close(); err != nil {
		t.Fatal(err)
	}
	return addr
}

// blockingHandler logs to the test and blocks the first record with message
// msg until release is closed, after closing reached: it holds a goroutine
// of the agent where the test wants it.
type blockingHandler struct {
	slog.Handler
	msg     string
	once    *sync.Once
	reached chan struct{}
	release chan struct{}
}

func (h blockingHandler) Handle(ctx context.Context, r slog.Record) error {
	if r.Message == h.msg {
		h.once.Do(func() {
			close(h.reached)
			<-h.release
		})
	}
	return h.Handler.Handle(ctx, r)
}

// enrolledDataDir prepares what an agent approved by a verifier keeps: an
// AK certified by a local CA, an active enrollment, the host credential,
// and workload's credential plus a replaced one waiting for deletion. The
// agent then starts without a verifier.
func enrolledDataDir(t *testing.T, sw *swtpmtest.TPM, workload string) string {
	t.Helper()
	const rpID, origin = "fleet.example.com", "tpmauthn://fleet.example.com"
	dir := t.TempDir()
	tp, err := tpm.Open(sw.URI())
	if err != nil {
		t.Fatal(err)
	}
	defer tp.Close() // swtpm serves one client at a time: the agent's is next
	auth, err := NewAuthenticator(tp, dir)
	if err != nil {
		t.Fatal(err)
	}
	ca, caKey, err := attestation.NewCA("test fleet CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := auth.EnrollWithCA(ca, caKey); err != nil {
		t.Fatal(err)
	}
	e := &Enrollment{HostID: "host-1", Status: api.HostActive, RPID: rpID, Origin: origin}
	if err := auth.saveEnrollment(e, nil); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{agentWorkload, workload, workload} {
		chal := make([]byte, 32)
		_, _ = rand.Read(chal)
		_, c, err := auth.Register(RegisterOptions{Name: name, RPID: rpID, Origin: origin, Challenge: chal})
		if err != nil {
			t.Fatalf("register %s: %v", name, err)
		}
		if name == workload {
			// The last one registered is the replaced one: deleted in an
			// hour, by a goroutine Close must stop.
			if err := auth.MarkRetiring(c.ID, time.Now().Add(time.Hour)); err != nil {
				t.Fatal(err)
			}
		}
	}
	return dir
}

// TestAgentCloseWaitsForGoroutines starts a whole agent (TPM queue, socket,
// metrics, rotation loop, a scheduled deletion), has it sign through the
// socket, and checks that Close waits for a goroutine of it that is busy
// when Close begins (the rotation loop, held in a log call) and that none
// survives Close.
func TestAgentCloseWaitsForGoroutines(t *testing.T) {
	sw := swtpmtest.New(t)
	const workload = "self"
	dir := enrolledDataDir(t, sw, workload)
	ignore := goleak.IgnoreCurrent() // swtpm's own helper goroutine, stopped at cleanup
	uid := uint32(os.Getuid())
	socket := filepath.Join(t.TempDir(), "agent.sock")
	ready := false
	loop := blockingHandler{
		Handler: slog.NewTextHandler(t.Output(), nil),
		// No verifier listens: every rotation check fails, and logs this.
		msg:  "rotation check failed",
		once: new(sync.Once), reached: make(chan struct{}), release: make(chan struct{}),
	}
	var releaseOnce sync.Once
	releaseLoop := func() { releaseOnce.Do(func() { close(loop.release) }) }
	defer releaseLoop() // on failure too, or the loop would block later tests
	a, err := New(Config{
		TPM: sw.URI(), DataDir: dir, NATSURL: "nats://" + closedPort(t), Socket: socket,
		Workloads:     []Workload{{Name: workload, Match: Selector{UID: &uid}}},
		MetricsListen: "127.0.0.1:0",
		RotationCheck: 10 * time.Millisecond,
		Logger:        slog.New(loop),
		Ready:         func() { ready = true },
	})
	if err != nil {
		t.Fatal(err)
	}
	// A start deadline that ends before Close: the agent's goroutines must
	// not depend on it, nor outlive Close because of it.
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	if err := a.Start(ctx); err != nil {
		t.Fatalf("Start: %v", err)
	}
	cancel()
	if !ready {
		t.Fatal("Start returned without calling Ready")
	}

	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", socket)
	}}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	body, _ := json.Marshal(api.AssertionRequest{Challenge: b64url(make([]byte, 32))})
	resp, err := hc.Post("http://agent/v1/assertion", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("POST /v1/assertion = %s", resp.Status)
	}
	resp, err = http.Get("http://" + a.MetricsAddr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	http.DefaultClient.CloseIdleConnections()

	if got := agentGoroutines(); len(got) == 0 {
		t.Fatal("no agent goroutine found while the agent runs: agentGoroutines is broken")
	}
	<-loop.reached // the rotation loop is held in its log call
	closed := make(chan error, 1)
	go func() { closed <- a.Close() }()
	select {
	case <-closed:
		t.Fatal("Close returned while the rotation loop was still running")
	case <-time.After(100 * time.Millisecond):
	}
	releaseLoop()
	if err := <-closed; err != nil {
		t.Fatalf("Close: %v", err)
	}
	if got := agentGoroutines(); len(got) > 0 {
		t.Fatalf("%d agent goroutine(s) still running after Close:\n\n%s", len(got), strings.Join(got, "\n\n"))
	}
	if err := a.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	tr.CloseIdleConnections()
	goleak.VerifyNone(t, ignore)
}

// TestAgentCloseAfterFailedStart: a Start that fails closes what it opened
// (the TPM queue's worker included), and Close stays safe to call after it,
// or without any Start.
func TestAgentCloseAfterFailedStart(t *testing.T) {
	sw := swtpmtest.New(t)
	tests := []struct {
		name    string
		tpm     string
		start   bool
		wantErr string // part of Start's error
	}{
		{"never-started", sw.URI(), false, ""},
		{"tpm-unreachable", "swtpm://" + closedPort(t), true, "connect to swtpm"},
		{"not-enrolled", sw.URI(), true, "no join token"}, // fails after the queue started
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
			a, err := New(Config{TPM: tc.tpm, DataDir: t.TempDir(), NATSURL: "nats://" + closedPort(t),
				Socket: filepath.Join(t.TempDir(), "agent.sock")})
			if err != nil {
				t.Fatal(err)
			}
			if tc.start {
				err := a.Start(t.Context())
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Start = %v, want an error containing %q", err, tc.wantErr)
				}
				if got := agentGoroutines(); len(got) > 0 {
					t.Fatalf("%d agent goroutine(s) still running after a failed Start:\n\n%s", len(got), strings.Join(got, "\n\n"))
				}
			}
			for i := range 2 {
				if err := a.Close(); err != nil {
					t.Fatalf("Close %d: %v", i+1, err)
				}
			}
			if err := a.Start(t.Context()); err == nil {
				t.Fatal("Start after Close succeeded")
			}
		})
	}
}
