package e2e

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tpmauthn/tpmauthn/agent"
	"github.com/tpmauthn/tpmauthn/agent/client"
	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/internal/eventually"
	"github.com/tpmauthn/tpmauthn/internal/fleettest"
	"github.com/tpmauthn/tpmauthn/verifier/record"
)

// TestAgentKilledDuringRegistration: the agent binary is killed (SIGKILL)
// while it registers its workloads' credentials, three times, at different
// points; started again it comes up whole: every workload has one active
// credential, a workload connects, and no tamper signal was raised by the
// agent's own crashes.
func TestAgentKilledDuringRegistration(t *testing.T) {
	f := fleettest.New(t)
	h := f.NewHost(t)
	if err := h.Agent.Close(); err != nil { // the binary takes over its TPM and data
		t.Fatal(err)
	}
	alerts, err := f.Op.SubscribeSync("tpmauthn.alerts.>")
	if err != nil {
		t.Fatal(err)
	}
	bin := buildBinary(t, "github.com/tpmauthn/tpmauthn/cmd/tpmauthn-agent")
	cfg := filepath.Join(t.TempDir(), "agent.yaml")
	conf := fmt.Sprintf("workloads:\n  - name: app\n    match: {uid: %d}\n", os.Getuid())
	for i := range 6 {
		conf += fmt.Sprintf("  - name: w%d\n    match: {uid: %d}\n", i, 60001+i)
	}
	if err := os.WriteFile(cfg, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(fleettest.PublicDir(t), "killed.sock")
	start := func() (*exec.Cmd, *syncBuffer) {
		cmd := exec.Command(bin, "run", "--config", cfg, "--tpm", f.TPM.URI(), "--data-dir", h.Config.DataDir,
			"--nats-url", f.URL(), "--socket", sock, "--hostname", "host-under-test")
		logs := &syncBuffer{}
		cmd.Stderr = logs
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		return cmd, logs
	}
	// A registration takes about 10 ms: each run is killed as soon as it
	// has logged its first one, inside the next (key created, certified,
	// begin or finish sent, files written: wherever it lands).
	killed := 0
	for range 3 {
		cmd, logs := start()
		deadline := time.Now().Add(60 * time.Second)
		for !strings.Contains(logs.String(), "credential registered") && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
		_ = cmd.Process.Signal(syscall.SIGKILL)
		_ = cmd.Wait()
		if strings.Contains(logs.String(), "credential registered") && !strings.Contains(logs.String(), "serving workloads") {
			killed++
		}
	}
	if killed == 0 {
		t.Fatal("no run was killed while registering: the test proves nothing")
	}
	t.Logf("%d of 3 runs killed while registering", killed)
	cmd, logs := start()
	t.Cleanup(func() { _ = cmd.Process.Signal(syscall.SIGTERM); _ = cmd.Wait() })
	c := client.New(sock)
	eventually.Until(t, 60*time.Second, func() error {
		if _, err := c.WhoAmI(t.Context()); err != nil {
			return fmt.Errorf("whoami after the kills: %w\n%s", err, logs.String())
		}
		return nil
	})
	h.Socket = sock
	nc, err := h.Connect(t)
	if err != nil {
		t.Fatalf("workload after the kills: %v\n%s", err, logs.String())
	}
	nc.Close()
	var creds []record.Credential
	f.MustAdmin(t, "credential.list", api.CredentialListRequest{}, &creds)
	active := map[string]int{}
	for _, cr := range creds {
		if cr.Status == api.CredentialActive {
			active[cr.Workload]++
		}
	}
	for _, w := range []string{"app", "w0", "w1", "w2", "w3", "w4", "w5"} {
		if active[w] != 1 {
			t.Errorf("workload %s has %d active credentials, want 1 (%v)\n%s", w, active[w], active, logs.String())
		}
	}
	// Every workload usable, none left waiting for an operator.
	if l := logs.String(); strings.Contains(l, "registration failed") || strings.Contains(l, "unavailable") {
		t.Fatalf("a workload was left unavailable after the kills:\n%s", l)
	}
	if m, err := alerts.NextMsg(time.Second); err == nil {
		t.Fatalf("a tamper signal after the agent's own crashes: %s: %s", m.Subject, m.Data)
	}
}

// TestAgentKilledDuringRotation: the agent binary is killed (SIGKILL) while
// it rotates its credentials (every workload's and its own, as an operator
// asks with credential rotate), four times, each a few milliseconds later
// into the rotations, while a workload keeps connecting. Started again it
// comes up whole: every workload has one current credential (and at most
// the one it replaced, within its grace period), the rotations asked for
// are done, a workload connects with the current credential, no counter
// went back, and no tamper signal was raised by the agent's own crashes.
func TestAgentKilledDuringRotation(t *testing.T) {
	// A short grace: the credentials replaced by one kill's rotations have
	// retired by the end, so at most one replaced credential per workload
	// may be left within its grace.
	f := fleettest.New(t, func(f *fleettest.Fleet) { f.Config.RotationGrace = 2 * time.Second })
	h := f.NewHost(t)
	if err := h.Agent.Close(); err != nil { // the binary takes over its TPM and data
		t.Fatal(err)
	}
	alerts, err := f.Op.SubscribeSync("tpmauthn.alerts.>")
	if err != nil {
		t.Fatal(err)
	}
	bin := buildBinary(t, "github.com/tpmauthn/tpmauthn/cmd/tpmauthn-agent")
	workloads := []string{"app"}
	cfg := filepath.Join(t.TempDir(), "agent.yaml")
	conf := fmt.Sprintf("workloads:\n  - name: app\n    match: {uid: %d}\n", os.Getuid())
	for i := range 6 {
		conf += fmt.Sprintf("  - name: w%d\n    match: {uid: %d}\n", i, 60001+i)
		workloads = append(workloads, fmt.Sprintf("w%d", i))
	}
	if err := os.WriteFile(cfg, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(fleettest.PublicDir(t), "killed.sock")
	h.Socket = sock
	start := func() (*exec.Cmd, *syncBuffer) {
		cmd := exec.Command(bin, "run", "--config", cfg, "--tpm", f.TPM.URI(), "--data-dir", h.Config.DataDir,
			"--nats-url", f.URL(), "--socket", sock, "--hostname", "host-under-test", "--rotation-check", "100ms")
		logs := &syncBuffer{}
		cmd.Stderr = logs
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		return cmd, logs
	}
	waitFor := func(logs *syncBuffer, line string) bool {
		deadline := time.Now().Add(60 * time.Second)
		for !strings.Contains(logs.String(), line) && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
		return strings.Contains(logs.String(), line)
	}

	// A workload connects all along: its credential signs while it
	// rotates, and its counter moves between the kills. While the agent is
	// down its connects fail (errored); none may be denied.
	var attempted, granted, denied, errored atomic.Int64
	var lastGrant atomic.Int64 // unix nanoseconds
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			attempted.Add(1)
			opts, err := client.NATSOptions(sock)
			if err == nil {
				var nc *nats.Conn
				if nc, err = nats.Connect(f.URL(), append(opts, nats.MaxReconnects(0), nats.Timeout(2*time.Second))...); err == nil {
					nc.Close()
				}
			}
			switch {
			case err == nil:
				granted.Add(1)
				lastGrant.Store(time.Now().UnixNano())
			case errors.Is(err, nats.ErrAuthorization):
				denied.Add(1)
			default:
				errored.Add(1)
			}
		}
	})
	defer func() {
		select {
		case <-stop:
		default:
			close(stop)
		}
		wg.Wait()
	}()

	counters := map[string]uint32{} // credential ID -> the highest counter seen
	checkCounters := func(when string) []record.Credential {
		var creds []record.Credential
		f.MustAdmin(t, "credential.list", api.CredentialListRequest{}, &creds)
		for _, c := range creds {
			if c.Counter < counters[c.ID] {
				t.Errorf("%s: credential %s (%s): counter %d, was %d", when, c.ID, c.Workload, c.Counter, counters[c.ID])
			}
			counters[c.ID] = c.Counter
		}
		return creds
	}

	killed := 0
	const runs, killStep = 6, 40
	for i := range runs {
		started := time.Now()
		cmd, logs := start()
		if !waitFor(logs, "serving workloads") {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
			t.Fatalf("run %d does not serve:\n%s", i, logs.String())
		}
		// Every current credential is to rotate: those asked for in an
		// earlier run and cut short are still asked for.
		pending := 0
		for _, c := range checkCounters(fmt.Sprintf("before run %d's rotations", i)) {
			if c.Status == api.CredentialActive && c.Retires.IsZero() {
				if !c.RotateRequested {
					f.MustAdmin(t, "credential.rotate", api.IDRequest{ID: c.ID, Reason: "kill test"}, nil)
				}
				pending++
			}
		}
		// A rotation takes 50 to 250 ms (a key created and certified, two
		// verifier round trips, files written): each run is killed a little
		// later after its first, somewhere inside one of the next.
		waitFor(logs, "credential rotated")
		time.Sleep(time.Duration(i*killStep) * time.Millisecond)
		_ = cmd.Process.Signal(syscall.SIGKILL)
		_ = cmd.Wait()
		// Rotations run one after the other: killed after the first was
		// done and before the last, it was inside one.
		done := strings.Count(logs.String(), "credential rotated")
		if done > 0 && done < pending {
			killed++
		}
		// Where the kill landed, as the verifier and the disk tell: a
		// rotation the verifier registered that the agent did not log (its
		// reply lost with the process), a key on disk the verifier never saw.
		registered := 0
		known := map[string]bool{}
		for _, c := range checkCounters(fmt.Sprintf("after run %d", i)) {
			known[c.ID] = true
			if !c.Retires.IsZero() && c.Updated.After(started) {
				registered++
			}
		}
		t.Logf("run %d: killed %d ms after its first rotation: %d of %d rotations logged by the agent, %d registered; %d keys on disk unknown to the verifier",
			i, i*killStep, done, pending, registered, len(unknownKeys(t, h.Config.DataDir, known)))
	}
	if killed == 0 {
		t.Fatal("no run was killed while rotating: the test proves nothing")
	}
	t.Logf("%d of %d runs killed while rotating", killed, runs)

	lastKill := time.Now()
	cmd, logs := start()
	t.Cleanup(func() { _ = cmd.Process.Signal(syscall.SIGTERM); _ = cmd.Wait() })
	// Recovery: from the last kill (the restart follows at once) until the
	// workload's connects are granted again.
	eventually.Until(t, 60*time.Second, func() error {
		if time.Unix(0, lastGrant.Load()).Before(lastKill) {
			return fmt.Errorf("no connect granted since the last kill\n%s", logs.String())
		}
		return nil
	})
	rec := time.Unix(0, lastGrant.Load()).Sub(lastKill)
	// The rotations asked for and cut short are done by the restarted
	// agent, and each workload is left with one current credential.
	eventually.Until(t, 60*time.Second, func() error {
		creds := checkCounters("after the restart")
		current, inGrace := map[string]int{}, map[string]int{}
		for _, c := range creds {
			switch {
			case c.Status != api.CredentialActive:
			case c.Retires.IsZero():
				if c.RotateRequested {
					return fmt.Errorf("credential %s of %s: its rotation is not done", c.ID, c.Workload)
				}
				current[c.Workload]++
			case !c.Retired(time.Now()):
				inGrace[c.Workload]++
			}
		}
		for _, w := range append(workloads, "tpmauthn-agent") {
			if current[w] != 1 || inGrace[w] > 1 {
				return fmt.Errorf("workload %s: %d current credentials and %d replaced within their grace, want 1 and at most 1\n%s", w, current[w], inGrace[w], logs.String())
			}
		}
		return nil
	})
	// On disk, the agent keeps the current keys and those within their
	// grace, and no key a cut rotation left behind.
	eventually.Until(t, 30*time.Second, func() error {
		var creds []record.Credential
		f.MustAdmin(t, "credential.list", api.CredentialListRequest{}, &creds)
		keep := map[string]bool{}
		for _, c := range creds {
			if c.Status == api.CredentialActive && !c.Retired(time.Now()) {
				keep[c.ID] = true
			}
		}
		paths, err := filepath.Glob(filepath.Join(h.Config.DataDir, "credentials", "*.json"))
		if err != nil {
			return eventually.Stop(err)
		}
		for _, p := range paths {
			b, err := os.ReadFile(p)
			if err != nil {
				return err // deleted meanwhile
			}
			var c agent.Credential
			if err := json.Unmarshal(b, &c); err != nil {
				return eventually.Stop(fmt.Errorf("%s: %w", p, err))
			}
			if !keep[c.IDString()] {
				return fmt.Errorf("credential %s of %s is on disk, neither current nor within its grace", c.IDString(), c.Name)
			}
			delete(keep, c.IDString())
		}
		for id := range keep {
			var c record.Credential
			f.MustAdmin(t, "credential.show", api.IDRequest{ID: id}, &c)
			if c.Retires.IsZero() {
				return eventually.Stop(fmt.Errorf("the current credential %s of %s is not on disk", id, c.Workload))
			}
		}
		return nil
	})
	who, err := client.New(sock).WhoAmI(t.Context())
	if err != nil {
		t.Fatalf("whoami after the kills: %v\n%s", err, logs.String())
	}
	var cur record.Credential
	f.MustAdmin(t, "credential.show", api.IDRequest{ID: who.CredentialID}, &cur)
	if cur.Status != api.CredentialActive || !cur.Retires.IsZero() {
		t.Fatalf("the agent signs for app with %s, which is not its current credential: %+v", who.CredentialID, cur)
	}
	nc, err := h.Connect(t)
	if err != nil {
		t.Fatalf("workload after the kills: %v\n%s", err, logs.String())
	}
	nc.Close()
	close(stop)
	wg.Wait()
	checkCounters("after the last connect")
	if denied.Load() != 0 {
		t.Errorf("%d of the workload's connects were denied: the agent signed with a credential the verifier refused", denied.Load())
	}
	logFault(t, fmt.Sprintf("agent killed during rotation (x%d)", runs), [4]int64{},
		[4]int64{attempted.Load(), granted.Load(), denied.Load(), errored.Load()}, rec)
	if l := logs.String(); strings.Contains(l, "rotation failed") || strings.Contains(l, "unavailable") {
		t.Fatalf("a rotation failed or a workload was left unavailable after the kills:\n%s", l)
	}
	if m, err := alerts.NextMsg(time.Second); err == nil {
		t.Fatalf("a tamper signal after the agent's own crashes: %s: %s", m.Subject, m.Data)
	}
}

// unknownKeys lists the credentials in an agent's data directory that are
// not in known.
func unknownKeys(t *testing.T, dataDir string, known map[string]bool) []string {
	t.Helper()
	paths, err := filepath.Glob(filepath.Join(dataDir, "credentials", "*.json"))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		var c agent.Credential
		if err := json.Unmarshal(b, &c); err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		if !known[c.IDString()] {
			out = append(out, c.IDString())
		}
	}
	return out
}
