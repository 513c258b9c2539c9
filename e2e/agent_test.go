package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tpmauthn/tpmauthn/agent"
	"github.com/tpmauthn/tpmauthn/agent/client"
	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/internal/eventually"
	"github.com/tpmauthn/tpmauthn/internal/fleettest"
	"github.com/tpmauthn/tpmauthn/verifier/record"
)

// curlAs runs curl --unix-socket as another user, as a workload would.
func curlAs(t *testing.T, uid uint32, socket, path string) (int, map[string]any) {
	t.Helper()
	curl, err := exec.LookPath("curl")
	if err != nil {
		t.Fatal("curl is needed for this test: apt-get install -y curl")
	}
	cmd := exec.Command(curl, "-s", "-o", "-", "-w", "\n%{http_code}", "--unix-socket", socket, "http://agent"+path)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid}}
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("curl as uid %d: %v", uid, err)
	}
	body, code, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	if i := strings.LastIndex(string(out), "\n"); i >= 0 {
		body, code = strings.TrimSpace(string(out[:i])), strings.TrimSpace(string(out[i+1:]))
	}
	status, _ := strconv.Atoi(code)
	var m map[string]any
	if err := json.Unmarshal([]byte(body), &m); err != nil {
		t.Fatalf("curl as uid %d: body %q: %v", uid, body, err)
	}
	return status, m
}

// requireRoot skips or fails (CI=true) a test that is not run as root. Under
// -short it skips first, as its fleet would.
func requireRoot(t *testing.T) {
	t.Helper()
	fleettest.Require(t)
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("this test runs workloads as other users and needs root")
		}
		t.Skip("needs root to run workloads as other users")
	}
}

// TestWorkloadsByUID: two workloads running as different users get different
// credentials; a user no selector names is refused, and told who it is.
func TestWorkloadsByUID(t *testing.T) {
	requireRoot(t)
	f := fleettest.New(t)
	h := f.NewHost(t, fleettest.Workloads(fleettest.UIDWorkload("billing", 1001), fleettest.UIDWorkload("copilot", 1002)))
	st1, w1 := curlAs(t, 1001, h.Socket, "/v1/whoami")
	st2, w2 := curlAs(t, 1002, h.Socket, "/v1/whoami")
	if st1 != 200 || st2 != 200 || w1["workload"] != "billing" || w2["workload"] != "copilot" {
		t.Fatalf("whoami: %d %v / %d %v", st1, w1, st2, w2)
	}
	if w1["credential_id"] == w2["credential_id"] || w1["credential_id"] == "" {
		t.Fatalf("credentials %v and %v, want two different ones", w1["credential_id"], w2["credential_id"])
	}
	if caller, _ := w1["caller"].(map[string]any); caller["exe"] == nil || caller["uid"] != float64(1001) {
		t.Fatalf("caller as the agent saw it: %v", w1["caller"])
	}
	st3, e := curlAs(t, 1003, h.Socket, "/v1/whoami")
	if st3 != 403 || !strings.Contains(fmt.Sprint(e["error"]), "uid=1003") || e["hint"] == "" {
		t.Fatalf("unconfigured uid: %d %v, want 403 naming uid=1003 with a hint", st3, e)
	}
	var creds []record.Credential
	f.MustAdmin(t, "credential.list", api.CredentialListRequest{}, &creds)
	names := map[string]string{}
	for _, c := range creds {
		names[c.ID] = c.Workload
	}
	if names[fmt.Sprint(w1["credential_id"])] != "billing" || names[fmt.Sprint(w2["credential_id"])] != "copilot" {
		t.Fatalf("verifier's credentials %v", names)
	}
}

func unixHTTP(socket string) *http.Client {
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
		MaxIdleConnsPerHost: 64,
	}}
}

// Test200ConcurrentRequests: every request is answered, with a signature or
// a clean refusal (busy, deadline), none hangs, and the agent still works.
func Test200ConcurrentRequests(t *testing.T) {
	f := fleettest.New(t)
	h := f.NewHost(t)
	hc := unixHTTP(h.Socket)
	var wg sync.WaitGroup
	results := make(chan int, 200)
	for i := range 200 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			body := fmt.Sprintf(`{"nonce":"nonce-%d"}`, i)
			resp, err := hc.Post("http://agent/v1/nats/sign", "application/json", strings.NewReader(body))
			if err != nil {
				results <- -1
				return
			}
			defer resp.Body.Close()
			var m map[string]any
			if json.NewDecoder(resp.Body).Decode(&m) != nil {
				results <- -2
				return
			}
			if resp.StatusCode == 200 && (m["sig"] == nil || m["nkey"] == nil) {
				results <- -3
				return
			}
			if resp.StatusCode != 200 && m["error"] == nil {
				results <- -4
				return
			}
			results <- resp.StatusCode
		}()
	}
	wg.Wait()
	close(results)
	count := map[int]int{}
	for r := range results {
		count[r]++
	}
	t.Logf("status counts: %v", count)
	for code, n := range count {
		if code != 200 && code != 429 && code != 503 {
			t.Fatalf("%d requests ended with %d (negative: transport or body error)", n, code)
		}
	}
	if count[200] == 0 {
		t.Fatal("no request was signed")
	}
	if _, _, err := client.New(h.Socket).NATSSign(t.Context(), []byte("after")); err != nil {
		t.Fatalf("agent after the storm: %v", err)
	}
}

// TestAgentRestart: credentials, their registrations and counters survive a
// restart of the agent; the verifier accepts the next connect.
func TestAgentRestart(t *testing.T) {
	f := fleettest.New(t)
	h := f.NewHost(t)
	before, err := client.New(h.Socket).WhoAmI(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	nc, err := h.Connect(t)
	if err != nil {
		t.Fatal(err)
	}
	nc.Close()
	if err := h.Agent.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(h.Config.TokenFile); err != nil { // an enrolled host needs no token
		t.Fatal(err)
	}
	h.Start(t)
	after, err := client.New(h.Socket).WhoAmI(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if after.CredentialID != before.CredentialID || after.Host != before.Host {
		t.Fatalf("after restart: %+v, before: %+v", after, before)
	}
	nc, err = h.Connect(t)
	if err != nil {
		t.Fatalf("connect after agent restart: %v", err)
	}
	nc.Close()
	var hosts []record.Host
	f.MustAdmin(t, "host.list", nil, &hosts)
	if len(hosts) != 1 {
		t.Fatalf("%d hosts after restart: the agent enrolled again", len(hosts))
	}
}

// TestTPMOutage: with swtpm stopped, requests fail with a clear error, and
// the agent recovers by itself when the TPM is back.
func TestTPMOutage(t *testing.T) {
	f := fleettest.New(t)
	h := f.NewHost(t)
	c := client.New(h.Socket)
	if _, _, err := c.NATSSign(t.Context(), []byte("n1")); err != nil {
		t.Fatal(err)
	}
	if err := f.TPM.Stop(); err != nil {
		t.Fatal(err)
	}
	_, _, err := c.NATSSign(t.Context(), []byte("n2"))
	var ae *client.Error
	if !errors.As(err, &ae) || ae.Status != 503 || !strings.Contains(ae.Message, "TPM") {
		t.Fatalf("sign with the TPM down: %v, want a 503 naming the TPM", err)
	}
	if err := f.TPM.StartOnPort(); err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.NATSSign(t.Context(), []byte("n3")); err != nil {
		t.Fatalf("sign after the TPM came back: %v", err)
	}
	nc, err := h.Connect(t)
	if err != nil {
		t.Fatalf("connect after recovery: %v", err)
	}
	nc.Close()
}

// TestSocketActivation runs the agent binary as systemd would: the socket is
// fd 3, LISTEN_FDS=1, LISTEN_PID its own pid.
func TestSocketActivation(t *testing.T) {
	f := fleettest.New(t)
	h := f.NewHost(t)
	// Free the TPM and the enrolled state for the binary.
	if err := h.Agent.Close(); err != nil {
		t.Fatal(err)
	}
	bin := buildBinary(t, "github.com/tpmauthn/tpmauthn/cmd/tpmauthn-agent")
	sock := filepath.Join(fleettest.PublicDir(t), "activated.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	ul := ln.(*net.UnixListener)
	lf, err := ul.File()
	if err != nil {
		t.Fatal(err)
	}
	ul.SetUnlinkOnClose(false) // the agent serves the path now
	ul.Close()
	cfg := filepath.Join(t.TempDir(), "agent.yaml")
	if err := os.WriteFile(cfg, fmt.Appendf(nil, "workloads:\n  - name: app\n    match: {uid: %d}\n", os.Getuid()), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("sh", "-c", `LISTEN_PID=$$ LISTEN_FDS=1 exec "$0" "$@"`, bin, "run",
		"--config", cfg, "--tpm", f.TPM.URI(), "--data-dir", h.Config.DataDir, "--nats-url", f.URL(),
		"--socket", "/nonexistent/must-not-be-used.sock")
	cmd.ExtraFiles = []*os.File{lf}
	var logs syncBuffer
	cmd.Stderr = &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Signal(syscall.SIGTERM); _ = cmd.Wait() })
	c := client.New(sock)
	var who *client.WhoAmI
	eventually.Until(t, 10*time.Second, func() (err error) {
		if who, err = c.WhoAmI(t.Context()); err != nil {
			return fmt.Errorf("whoami over the activated socket: %w\n%s", err, logs.String())
		}
		return nil
	})
	if who.Workload != "app" || !strings.Contains(logs.String(), "using the socket passed by systemd") {
		t.Fatalf("whoami %+v; log:\n%s", who, logs.String())
	}
}

// syncBuffer is a bytes.Buffer safe to write from exec's copier and read
// from the test.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestAgentMetrics(t *testing.T) {
	f := fleettest.New(t)
	h := f.NewHost(t, func(c *agent.Config) { c.MetricsListen = "127.0.0.1:0" })
	nc, err := h.Connect(t)
	if err != nil {
		t.Fatal(err)
	}
	nc.Close()
	resp, err := http.Get("http://" + h.Agent.MetricsAddr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b strings.Builder
	_, _ = io.Copy(&b, resp.Body)
	for _, want := range []string{
		`tpmauthn_agent_assertions_total{kind="nats",result="ok",workload="app"} 1`,
		`tpmauthn_agent_tpm_command_seconds_count{command="Sign",result="ok"}`,
		`tpmauthn_agent_tpm_queue_depth 0`,
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}

func TestAgentRefusesAnotherRPID(t *testing.T) {
	f := fleettest.New(t)
	h := f.NewHost(t)
	if err := h.Agent.Close(); err != nil {
		t.Fatal(err)
	}
	cfg := h.Config
	cfg.RPID = "other.example.com"
	ag, err := agent.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	err = ag.Start(context.Background())
	if err == nil {
		_ = ag.Close()
		t.Fatal("the agent accepted a verifier with another RP ID")
	}
	if !strings.Contains(err.Error(), "fleet.example.com") {
		t.Fatalf("error does not name the verifier's RP ID: %v", err)
	}
}

// TestTPMLostAndBack: swtpm stops under a running agent. The agent says so
// (/healthz 503 tpm_unavailable with a hint; a signature request 503 with
// the same hint), then, swtpm back on its port, recovers without a restart
// of its own, its credentials whole: the workload connects again.
func TestTPMLostAndBack(t *testing.T) {
	f := fleettest.New(t)
	h := f.NewHost(t)
	hc := unixHTTP(h.Socket)
	get := func(method, path, body string) (int, map[string]any) {
		req, _ := http.NewRequest(method, "http://agent"+path, strings.NewReader(body))
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var m map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&m)
		return resp.StatusCode, m
	}
	sign := func() (int, map[string]any) { return get("POST", "/v1/nats/sign", `{"nonce":"bm9uY2Vub25jZQ"}`) }
	if code, m := sign(); code != http.StatusOK {
		t.Fatalf("sign before the fault: %d %v", code, m)
	}
	// Workloads connect the whole time: the fault's row in make chaos.
	l, stop := &load{}, make(chan struct{})
	lw := l.run(t, h, 2, 100*time.Millisecond, stop)
	defer func() { close(stop); lw.Wait() }()
	s0 := l.snapshot()
	if err := f.TPM.Stop(); err != nil {
		t.Fatal(err)
	}
	code, m := sign()
	if code != http.StatusServiceUnavailable || !strings.Contains(fmt.Sprint(m["hint"]), "reconnects by itself") {
		t.Fatalf("sign with swtpm down: %d %v, want 503 with the TPM hint", code, m)
	}
	if code, m := get("GET", "/healthz", ""); code != http.StatusServiceUnavailable || m["status"] != "tpm_unavailable" || m["hint"] == nil {
		t.Fatalf("/healthz with swtpm down: %d %v", code, m)
	}
	time.Sleep(time.Second) // a second of workloads meeting the TPM's absence
	if err := f.TPM.StartOnPort(); err != nil {
		t.Fatal(err)
	}
	back := time.Now()
	eventually.Until(t, 30*time.Second, func() error {
		if code, m := sign(); code != http.StatusOK {
			return fmt.Errorf("sign after swtpm's return: %d %v", code, m)
		}
		return nil
	})
	rec := l.recovered(t, back, 30*time.Second)
	s1 := l.snapshot()
	logFault(t, "swtpm killed and started again", s0, s1, rec)
	if s1[2] != s0[2] {
		t.Errorf("%d connects denied while the TPM was away: the agent should fail them locally (errored), not send the verifier anything to deny", s1[2]-s0[2])
	}
	if code, m := get("GET", "/healthz", ""); code != http.StatusOK {
		t.Fatalf("/healthz after swtpm's return: %d %v", code, m)
	}
	nc, err := h.Connect(t)
	if err != nil {
		t.Fatalf("workload after swtpm's return: %v", err)
	}
	nc.Close()
}
