package e2e

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tpmauthn/tpmauthn/agent"
	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/internal/eventually"
	"github.com/tpmauthn/tpmauthn/internal/fleettest"
)

// The tests of issue 13 part 5: one revoked workload never takes its host
// down. The host runs two workloads: "app" (this process's uid) and
// "billing" (uid 1001, whose requests go through curl run as that user).

const billingUID = 1001

// twoWorkloadHost starts a host whose agent checks its credentials' status
// every 200 ms.
func twoWorkloadHost(t *testing.T, f *fleettest.Fleet) *fleettest.Host {
	t.Helper()
	return f.NewHost(t, fleettest.Workloads(fleettest.UIDWorkload("app", uint32(os.Getuid())), fleettest.UIDWorkload("billing", billingUID)),
		func(c *agent.Config) { c.RotationCheck = 200 * time.Millisecond })
}

// curlPostAs POSTs body to the agent's socket as user uid.
func curlPostAs(t *testing.T, uid uint32, socket, path, body string) (int, map[string]any, error) {
	t.Helper()
	cmd := exec.Command("curl", "-s", "-o", "-", "-w", "\n%{http_code}", "--unix-socket", socket,
		"-H", "Content-Type: application/json", "-d", body, "http://agent"+path)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid}}
	out, err := cmd.Output()
	if err != nil {
		return 0, nil, fmt.Errorf("curl as uid %d: %w", uid, err)
	}
	i := strings.LastIndex(strings.TrimSpace(string(out)), "\n")
	if i < 0 {
		return 0, nil, fmt.Errorf("curl as uid %d: %q", uid, out)
	}
	status, _ := strconv.Atoi(strings.TrimSpace(string(out[i+1:])))
	var m map[string]any
	if err := json.Unmarshal(out[:i], &m); err != nil {
		return 0, nil, fmt.Errorf("curl as uid %d: body %q: %w", uid, out[:i], err)
	}
	return status, m, nil
}

// connectWorkload connects to NATS as workload uid of the host: the nonce is
// signed by the agent for a caller of that uid, as the workload's own
// client library would have it signed.
func connectWorkload(t *testing.T, f *fleettest.Fleet, h *fleettest.Host, uid uint32) (*nats.Conn, error) {
	t.Helper()
	st, who := curlAs(t, uid, h.Socket, api.AgentPathWhoAmI)
	if st != 200 {
		return nil, fmt.Errorf("whoami as uid %d: %d %v", uid, st, who)
	}
	nkey := fmt.Sprint(who["nkey"])
	signer := func(nonce []byte) ([]byte, error) {
		req, _ := json.Marshal(api.NATSSignRequest{Nonce: string(nonce)})
		st, res, err := curlPostAs(t, uid, h.Socket, api.AgentPathNATSSign, string(req))
		if err != nil {
			return nil, err
		}
		if st != 200 {
			return nil, fmt.Errorf("agent: %d %v", st, res)
		}
		return base64.RawURLEncoding.DecodeString(fmt.Sprint(res["sig"]))
	}
	return nats.Connect(f.URL(), nats.Nkey(nkey, signer), nats.CustomInboxPrefix(api.InboxForCredential(nkey)), nats.MaxReconnects(0))
}

// wantRevokedAnswer waits until the agent answers uid's workload with a 403
// that names the credential and the operator command that brings it back.
func wantRevokedAnswer(t *testing.T, h *fleettest.Host, uid uint32, credID string) {
	t.Helper()
	eventually.Until(t, 5*time.Second, func() error {
		st, body := curlAs(t, uid, h.Socket, api.AgentPathWhoAmI)
		msg, hint := fmt.Sprint(body["error"]), fmt.Sprint(body["hint"])
		if st != 403 || !strings.Contains(msg, "revoked") || !strings.Contains(msg, credID) ||
			!strings.Contains(hint, "tpmauthnctl credential reissue "+credID) {
			return fmt.Errorf("whoami of the revoked workload: %d %v, want 403 naming %s, with the reissue command as hint", st, body, credID)
		}
		req, _ := json.Marshal(api.NATSSignRequest{Nonce: "some-nonce"})
		st, body, err := curlPostAs(t, uid, h.Socket, api.AgentPathNATSSign, string(req))
		if err != nil || st != 403 {
			return fmt.Errorf("nats/sign of the revoked workload: %d %v %v, want 403", st, body, err)
		}
		return nil
	})
}

func mustConnect(t *testing.T, h *fleettest.Host, what string) {
	t.Helper()
	nc, err := h.Connect(t)
	if err != nil {
		t.Fatalf("%s: the other workload cannot connect: %v", what, err)
	}
	nc.Close()
}

// noAlerts fails t if an alert arrives on sub within d.
func noAlerts(t *testing.T, sub *nats.Subscription, d time.Duration) {
	t.Helper()
	if m, err := sub.NextMsg(d); err == nil {
		t.Fatalf("alert %s after the agent knew of the revocation: %s", m.Subject, m.Data)
	} else if !errors.Is(err, nats.ErrTimeout) {
		t.Fatal(err)
	}
}

func drain(sub *nats.Subscription) {
	for {
		if _, err := sub.NextMsg(10 * time.Millisecond); err != nil {
			return
		}
	}
}

// TestRevokedWorkloadKeepsHostServing: revoking one of two workloads leaves
// the other connecting; the revoked one gets a 403 with the way back, the
// agent stops presenting the revoked key (no further tamper alerts), and a
// restart of the agent starts fine and remembers.
func TestRevokedWorkloadKeepsHostServing(t *testing.T) {
	requireRoot(t)
	f := fleettest.New(t)
	h := twoWorkloadHost(t, f)
	nc, err := connectWorkload(t, f, h, billingUID)
	if err != nil {
		t.Fatalf("billing before the revocation: %v", err)
	}
	nc.Close()
	_, who := curlAs(t, billingUID, h.Socket, api.AgentPathWhoAmI)
	billing := fmt.Sprint(who["credential_id"])
	alerts, err := f.Op.SubscribeSync("tpmauthn.alerts.>")
	if err != nil {
		t.Fatal(err)
	}

	f.MustAdmin(t, "credential.revoke", api.IDRequest{ID: billing, Reason: "test"}, nil)
	wantRevokedAnswer(t, h, billingUID, billing)
	mustConnect(t, h, "after the revocation")
	drain(alerts) // what the verifier said before the agent knew
	for range 3 {
		if nc, err := connectWorkload(t, f, h, billingUID); err == nil {
			nc.Close()
			t.Fatal("the revoked workload connected")
		}
	}
	noAlerts(t, alerts, time.Second)

	if err := h.Agent.Close(); err != nil {
		t.Fatal(err)
	}
	h.Start(t)
	mustConnect(t, h, "after a restart")
	wantRevokedAnswer(t, h, billingUID, billing)
	noAlerts(t, alerts, 500*time.Millisecond)
}

// wantWorkloadBack waits until uid's workload has a credential other than
// old again, then connects with it.
func wantWorkloadBack(t *testing.T, f *fleettest.Fleet, h *fleettest.Host, uid uint32, old string) string {
	t.Helper()
	var cred string
	eventually.Until(t, 5*time.Second, func() error {
		st, who := curlAs(t, uid, h.Socket, api.AgentPathWhoAmI)
		cred = fmt.Sprint(who["credential_id"])
		if st != 200 || cred == old || who["nkey"] == old {
			return fmt.Errorf("whoami: %d %v, want a new credential and nkey (not %s)", st, who, old)
		}
		return nil
	})
	nc, err := connectWorkload(t, f, h, uid)
	if err != nil {
		t.Fatalf("the workload with its reissued credential %s: %v", cred, err)
	}
	nc.Close()
	return cred
}

// TestReissueRevokedWorkload: after credential reissue the agent registers
// a new credential (a new lineage) for the revoked workload within its check
// interval, without a restart; the revoked one stays revoked, and reissue is
// refused for a credential that is not revoked or no longer its workload's.
func TestReissueRevokedWorkload(t *testing.T) {
	requireRoot(t)
	f := fleettest.New(t)
	h := twoWorkloadHost(t, f)
	_, who := curlAs(t, billingUID, h.Socket, api.AgentPathWhoAmI)
	old := fmt.Sprint(who["credential_id"])
	if code := f.Admin(t, "credential.reissue", api.IDRequest{ID: old, Reason: "test"}, nil); code != api.CodeBadRequest {
		t.Fatalf("reissue of an active credential: code %q, want %s", code, api.CodeBadRequest)
	}
	f.MustAdmin(t, "credential.revoke", api.IDRequest{ID: old, Reason: "test"}, nil)
	wantRevokedAnswer(t, h, billingUID, old)
	alerts, err := f.Op.SubscribeSync("tpmauthn.alerts.>")
	if err != nil {
		t.Fatal(err)
	}

	var wi map[string]any
	f.MustAdmin(t, "credential.reissue", api.IDRequest{ID: old, Reason: "reviewed"}, &wi)
	cred := wantWorkloadBack(t, f, h, billingUID, old)
	mustConnect(t, h, "after the reissue")
	noAlerts(t, alerts, 200*time.Millisecond)

	var c struct{ Status api.CredentialStatus }
	f.MustAdmin(t, "credential.show", api.IDRequest{ID: old}, &c)
	if c.Status != api.CredentialRevoked {
		t.Fatalf("the revoked credential is %s after the reissue, want revoked for good", c.Status)
	}
	if code := f.Admin(t, "credential.reissue", api.IDRequest{ID: old}, nil); code != api.CodeBadRequest {
		t.Fatalf("a second reissue of %s after %s replaced it: code %q, want %s", old, cred, code, api.CodeBadRequest)
	}
	events := f.AuditEvents(t)
	found := false
	for _, e := range events {
		found = found || (e.Kind == "reissue" && e.Credential == old && e.Actor == "operator" && e.Result == "ok")
	}
	if !found {
		t.Fatal("no audit event for the reissue")
	}
}

// TestLostWorkloadKeyDoesNotStopAgent: a workload's key file is gone while
// the verifier still holds its credential: the agent starts and serves the
// other workload, answers the lost one with what to do, and brings it back
// after the operator revokes and reissues the lost credential.
func TestLostWorkloadKeyDoesNotStopAgent(t *testing.T) {
	requireRoot(t)
	f := fleettest.New(t)
	h := twoWorkloadHost(t, f)
	_, who := curlAs(t, billingUID, h.Socket, api.AgentPathWhoAmI)
	lost := fmt.Sprint(who["credential_id"])
	if err := h.Agent.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(h.Config.DataDir, "credentials", lost+".json")); err != nil {
		t.Fatal(err)
	}
	h.Start(t)
	mustConnect(t, h, "with one workload's key gone")
	st, body := curlAs(t, billingUID, h.Socket, api.AgentPathWhoAmI)
	if st != 403 || !strings.Contains(fmt.Sprint(body["error"]), lost) ||
		!strings.Contains(fmt.Sprint(body["hint"]), "tpmauthnctl credential revoke "+lost) {
		t.Fatalf("whoami of the workload whose key is gone: %d %v, want 403 naming %s with the way back", st, body, lost)
	}
	f.MustAdmin(t, "credential.revoke", api.IDRequest{ID: lost, Reason: "key lost"}, nil)
	f.MustAdmin(t, "credential.reissue", api.IDRequest{ID: fmt.Sprint(who["host"]) + "/billing", Reason: "key lost"}, nil)
	wantWorkloadBack(t, f, h, billingUID, lost)
}
