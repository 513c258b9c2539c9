package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/tpmauthn/tpmauthn/agent"
	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/internal/doctor"
	"github.com/tpmauthn/tpmauthn/internal/eventually"
	"github.com/tpmauthn/tpmauthn/internal/fleettest"
	"github.com/tpmauthn/tpmauthn/internal/swtpmtest"
)

// check finds the check called name.
func check(t *testing.T, cs []doctor.Check, name string) doctor.Check {
	t.Helper()
	for _, c := range cs {
		if c.Name == name {
			return c
		}
	}
	var b bytes.Buffer
	_ = doctor.Print(&b, cs, false)
	t.Fatalf("no check %q in:\n%s", name, b.String())
	return doctor.Check{}
}

func wantCheck(t *testing.T, cs []doctor.Check, name string, ok bool, detail string) {
	t.Helper()
	c := check(t, cs, name)
	if c.OK != ok || c.Skipped || !strings.Contains(c.Detail, detail) || (!ok && c.Fix == "") {
		var b bytes.Buffer
		_ = doctor.Print(&b, cs, false)
		t.Fatalf("check %q: ok=%v skipped=%v %q (fix %q), want ok=%v with %q\n%s", name, c.OK, c.Skipped, c.Detail, c.Fix, ok, detail, b.String())
	}
}

// TestAgentDoctor: on a healthy host every check passes (or says why it
// could not be made); then each thing is broken on purpose and its check
// fails, naming the fix.
func TestAgentDoctor(t *testing.T) {
	f := fleettest.New(t)
	h := f.NewHost(t, func(c *agent.Config) { c.RotationCheck = 200 * time.Millisecond })
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	opts := agent.DoctorOptions{EKCADir: f.EKCADir}
	cs := agent.Doctor(ctx, h.Config, opts)
	if doctor.Failed(cs) {
		var b bytes.Buffer
		_ = doctor.Print(&b, cs, false)
		t.Fatalf("a healthy host failed a check:\n%s", b.String())
	}
	var out bytes.Buffer
	_ = doctor.Print(&out, cs, false)
	t.Logf("tpmauthn-agent doctor on a healthy host:\n%s", out.String())
	wantCheck(t, cs, "TPM", true, "transient slots")
	wantCheck(t, cs, "workload app", true, "credential ")
	eventually.Until(t, 5*time.Second, func() error {
		cs = agent.Doctor(ctx, h.Config, opts)
		if c := check(t, cs, "verifier"); !c.OK || c.Skipped {
			return os.ErrNotExist
		}
		return nil
	})

	// The verifier revokes the workload's credential.
	who := whoami(t, h)
	f.MustAdmin(t, "credential.revoke", api.IDRequest{ID: who, Reason: "doctor test"}, nil)
	eventually.Until(t, 5*time.Second, func() error {
		if check(t, agent.Doctor(ctx, h.Config, opts), "workload app").OK {
			return os.ErrExist
		}
		return nil
	})
	wantCheck(t, agent.Doctor(ctx, h.Config, opts), "workload app", false, "revoked")

	// NATS at the wrong address.
	bad := h.Config
	bad.NATSURL = "nats://127.0.0.1:1"
	wantCheck(t, agent.Doctor(ctx, bad, opts), "NATS", false, "cannot reach")

	// The data directory opened to others.
	if err := os.Chmod(h.Config.DataDir, 0o755); err != nil {
		t.Fatal(err)
	}
	wantCheck(t, agent.Doctor(ctx, h.Config, opts), "data directory", false, "others can read")
	_ = os.Chmod(h.Config.DataDir, 0o700)

	// The host revoked: the verifier refuses the agent's own credential,
	// and doctor says so, with where to look.
	f.MustAdmin(t, "host.revoke", api.IDRequest{ID: h.HostID(t), Reason: "doctor test"}, nil)
	eventually.Until(t, 30*time.Second, func() error {
		if c := check(t, agent.Doctor(ctx, h.Config, opts), "verifier"); c.OK || !strings.Contains(c.Detail, "revoked or offboarded") {
			return fmt.Errorf("verifier check: %+v", c)
		}
		return nil
	})
	wantCheck(t, agent.Doctor(ctx, h.Config, opts), "verifier", false, "refuses this host's own credential")

	// The agent stopped: the socket is gone, and doctor opens the TPM
	// itself: the EK certificate chains to the fleet's EK CAs, and not to
	// another manufacturer's.
	if err := h.Agent.Close(); err != nil {
		t.Fatal(err)
	}
	cs = agent.Doctor(ctx, h.Config, opts)
	wantCheck(t, cs, "agent", false, "not answering")
	wantCheck(t, cs, "socket", false, "no such file")
	wantCheck(t, cs, "EK certificate", true, "chains to")
	other := fleettest.EKCADir(t, swtpmtest.New(t)) // another swtpm's manufacturer CA
	wantCheck(t, agent.Doctor(ctx, h.Config, agent.DoctorOptions{EKCADir: other}), "EK certificate", false, "does not chain")
}

func whoami(t *testing.T, h *fleettest.Host) string {
	t.Helper()
	st, who := curlAs(t, uint32(os.Getuid()), h.Socket, api.AgentPathWhoAmI)
	if st != 200 {
		t.Fatalf("whoami: %d %v", st, who)
	}
	return who["credential_id"].(string)
}
