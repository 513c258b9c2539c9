package verifier_test

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/fxamacker/cbor/v2"
	"github.com/google/go-attestation/attest"
	"github.com/nats-io/nats.go"

	"github.com/tpmauthn/tpmauthn/agent"
	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/attestation"
	"github.com/tpmauthn/tpmauthn/internal/swtpmtest"
	"github.com/tpmauthn/tpmauthn/verifier"
	"github.com/tpmauthn/tpmauthn/verifier/record"
)

// request sends one v1 request on nc and returns the error code, if any.
func request(t *testing.T, nc *nats.Conn, subj string, req, resp any) string {
	t.Helper()
	b, _ := json.Marshal(req)
	m, err := nc.Request(subj, b, 5*time.Second)
	if err != nil {
		t.Fatalf("%s: %v", subj, err)
	}
	if code := m.Header.Get("Nats-Service-Error-Code"); code != "" {
		return code
	}
	if err := json.Unmarshal(m.Data, resp); err != nil {
		t.Fatal(err)
	}
	return ""
}

// TestAKFromAnotherTPM: the verifier is told that TPM B's AK sits beside
// TPM A's EK. Neither TPM can answer the activation challenge.
func TestAKFromAnotherTPM(t *testing.T) {
	f := newFleet(t, nil)
	tpmA := f.sw.Open(t)
	tpmB := swtpmtest.New(t).Open(t)
	ekA, err := tpmA.EK()
	if err != nil {
		t.Fatal(err)
	}
	akB, err := tpmB.NewAK()
	if err != nil {
		t.Fatal(err)
	}
	ekDER, _ := x509.MarshalPKIXPublicKey(ekA.Public)
	p := akB.AttestationParameters()
	info := tpmA.Info()
	nc, err := sessionConn(f.v.ClientURL(), f.token(t, time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	var begin api.EnrollBeginResponse
	code := request(t, nc, api.SubjectEnrollBegin, api.EnrollBeginRequest{
		Hostname: "mixed", EKCert: ekA.Certificate.Raw, EKPublic: ekDER, Token: "",
		AK:  api.AKParams{Public: p.Public, CreateData: p.CreateData, CreateAttestation: p.CreateAttestation, CreateSignature: p.CreateSignature},
		TPM: api.TPMInfo{Manufacturer: info.Manufacturer, VendorString: info.VendorString, FirmwareVersion1: info.FirmwareVersion1},
	}, &begin)
	if code != "not_allowed" {
		t.Fatalf("begin without token or allow-list: code %q, want not_allowed", code)
	}
	tok := f.token(t, time.Hour)
	code = request(t, nc, api.SubjectEnrollBegin, api.EnrollBeginRequest{
		Hostname: "mixed", EKCert: ekA.Certificate.Raw, EKPublic: ekDER, Token: tok,
		AK:  api.AKParams{Public: p.Public, CreateData: p.CreateData, CreateAttestation: p.CreateAttestation, CreateSignature: p.CreateSignature},
		TPM: api.TPMInfo{Manufacturer: info.Manufacturer, VendorString: info.VendorString, FirmwareVersion1: info.FirmwareVersion1},
	}, &begin)
	if code != "" {
		t.Fatalf("begin: %s", code)
	}
	ec := attest.EncryptedCredential{Credential: begin.Credential, Secret: begin.Secret}
	secret, err := tpmB.ActivateCredential(akB, ec)
	if err == nil {
		// TPM B cannot decrypt a secret sealed to A's EK; if the TPM returns
		// bytes anyway they must not be the secret.
		var res api.EnrollResult
		if code := request(t, nc, api.SubjectEnrollFinish, api.EnrollFinishRequest{Session: begin.Session, Secret: secret}, &res); code != "activation_failed" {
			t.Fatalf("finish with TPM B's answer: code %q, want activation_failed", code)
		}
		return
	}
	if _, err := tpmA.ActivateCredential(akB, ec); err == nil {
		t.Fatal("TPM A loaded TPM B's AK")
	}
	var res api.EnrollResult
	if code := request(t, nc, api.SubjectEnrollFinish, api.EnrollFinishRequest{Session: begin.Session, Secret: []byte("guess")}, &res); code != "activation_failed" {
		t.Fatalf("finish with a guessed secret: code %q, want activation_failed", code)
	}
	// The session is single-use: the right secret cannot be sent afterwards.
	if code := request(t, nc, api.SubjectEnrollFinish, api.EnrollFinishRequest{Session: begin.Session, Secret: []byte("guess")}, &res); code != "not_found" {
		t.Fatalf("second finish on one session: code %q, want not_found", code)
	}
	var tokens []record.Token
	admin(t, f.op, "token.list", nil, &tokens)
	for _, tk := range tokens {
		if tk.UsedBy != "" {
			t.Fatalf("a failed enrollment consumed token %s", tk.ID)
		}
	}
}

func TestForgedRegistrationDenied(t *testing.T) {
	f := newFleet(t, nil)
	a := newAgent(t, f.sw)
	e, err := f.enroll(t, a, f.token(t, time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	nc, err := sessionConn(f.v.ClientURL(), f.token(t, time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	for _, field := range []string{"certInfo", "pubArea", "sig"} {
		var begin api.RegisterBeginResponse
		if code := request(t, nc, api.SubjectRegisterBegin, api.RegisterBeginRequest{HostID: e.HostID, Workload: "billing"}, &begin); code != "" {
			t.Fatal(code)
		}
		resp, _, err := a.Register(agent.RegisterOptions{Name: "billing", RPID: begin.RPID, Origin: begin.Origin, Challenge: begin.Challenge, UserHandle: begin.UserHandle})
		if err != nil {
			t.Fatal(err)
		}
		forge(t, resp, field)
		var fin api.RegisterFinishResponse
		code := request(t, nc, api.SubjectRegisterFinish, api.RegisterFinishRequest{HostID: e.HostID, Workload: "billing", Challenge: begin.Challenge, Response: resp}, &fin)
		if code != "attestation_rejected" {
			t.Fatalf("registration with a forged %s: code %q, want attestation_rejected", field, code)
		}
	}
	var creds []record.Credential
	admin(t, f.op, "credential.list", api.CredentialListRequest{}, &creds)
	if len(creds) != 0 {
		t.Fatalf("%d credentials stored from forged registrations", len(creds))
	}
}

// forge flips a byte in the middle of an attStmt field.
func forge(t *testing.T, resp *api.RegistrationResponse, field string) {
	t.Helper()
	raw, err := attestation.DecodeB64URL(resp.Response.AttestationObject)
	if err != nil {
		t.Fatal(err)
	}
	var obj map[string]any
	if err := cbor.Unmarshal(raw, &obj); err != nil {
		t.Fatal(err)
	}
	stmt := obj["attStmt"].(map[any]any)
	b := append([]byte(nil), stmt[field].([]byte)...)
	b[len(b)/2] ^= 0x01
	stmt[field] = b
	out, err := cbor.Marshal(obj)
	if err != nil {
		t.Fatal(err)
	}
	resp.Response.AttestationObject = b64url(out)
}

func TestRegistrationChallengeSingleUse(t *testing.T) {
	f := newFleet(t, nil)
	a := newAgent(t, f.sw)
	e, err := f.enroll(t, a, f.token(t, time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	nc, err := sessionConn(f.v.ClientURL(), f.token(t, time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	var begin api.RegisterBeginResponse
	if code := request(t, nc, api.SubjectRegisterBegin, api.RegisterBeginRequest{HostID: e.HostID, Workload: "billing"}, &begin); code != "" {
		t.Fatal(code)
	}
	resp, _, err := a.Register(agent.RegisterOptions{Name: "billing", RPID: begin.RPID, Origin: begin.Origin, Challenge: begin.Challenge, UserHandle: begin.UserHandle})
	if err != nil {
		t.Fatal(err)
	}
	req := api.RegisterFinishRequest{HostID: e.HostID, Workload: "billing", Challenge: begin.Challenge, Response: resp}
	var fin api.RegisterFinishResponse
	if code := request(t, nc, api.SubjectRegisterFinish, req, &fin); code != "" {
		t.Fatalf("first finish: %s", code)
	}
	if code := request(t, nc, api.SubjectRegisterFinish, req, &fin); code != "challenge_invalid" {
		t.Fatalf("replayed registration: code %q, want challenge_invalid", code)
	}
	for _, bad := range []api.RegisterBeginRequest{{HostID: e.HostID, Workload: "a.b"}, {HostID: e.HostID, Workload: ""}, {HostID: "h-nope", Workload: "x"}} {
		if code := request(t, nc, api.SubjectRegisterBegin, bad, &begin); code == "" {
			t.Fatalf("register.begin %+v accepted", bad)
		}
	}
}

func TestEKAllowList(t *testing.T) {
	f := newFleet(t, func(c *verifier.Config) { c.EKCADir = "" }) // no manufacturer roots at all
	a := newAgent(t, f.sw)
	ek, err := a.TPM().EK()
	if err != nil {
		t.Fatal(err)
	}
	hash, err := attestation.EKHash(ek.Public)
	if err != nil {
		t.Fatal(err)
	}
	connect := func() (*nats.Conn, error) {
		return nats.Connect(f.v.ClientURL(), nats.UserInfo(api.EKUserPrefix+hash, ""), nats.MaxReconnects(0))
	}
	if _, err := connect(); err == nil {
		t.Fatal("an EK not on the allow-list got an enrollment session")
	}
	if code := admin(t, f.op, "ek.allow", api.EKAllowRequest{EKHash: hash, Roles: []string{"edge"}}, nil); code != "" {
		t.Fatalf("ek.allow: %s", code)
	}
	nc, err := connect()
	if err != nil {
		t.Fatalf("allow-listed EK: %v", err)
	}
	defer nc.Close()
	e, err := a.Enroll(context.Background(), nc, "", "edge-1")
	if err != nil || e.Status != api.HostActive {
		t.Fatalf("enroll by allow-list = %+v, %v", e, err)
	}
	// The same TPM cannot enroll twice.
	again, err := agent.NewAuthenticator(a.TPM(), t.TempDir()) // a reinstalled host: new AK
	if err != nil {
		t.Fatal(err)
	}
	_, err = again.Enroll(context.Background(), nc, "", "edge-1-again")
	wantCode(t, err, "already_enrolled")
}

func TestRestartKeepsState(t *testing.T) {
	f := newFleet(t, nil)
	a := newAgent(t, f.sw)
	e, err := f.enroll(t, a, f.token(t, time.Hour, "demo"))
	if err != nil {
		t.Fatal(err)
	}
	nc, err := sessionConn(f.v.ClientURL(), f.token(t, time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	cred, err := a.RegisterWithVerifier(context.Background(), nc, "billing")
	nc.Close()
	if err != nil {
		t.Fatal(err)
	}
	spare := f.token(t, time.Hour)
	caBefore := f.v.Keys().FleetCA.Raw

	f.v.Close()
	f.start(t) // same data dir
	if string(f.v.Keys().FleetCA.Raw) != string(caBefore) {
		t.Fatal("fleet CA changed across restart")
	}
	var h record.Host
	if code := admin(t, f.op, "host.show", api.IDRequest{ID: e.HostID}, &h); code != "" || h.Status != api.HostActive {
		t.Fatalf("host after restart: %s %+v", code, h)
	}
	var c record.Credential
	if code := admin(t, f.op, "credential.show", api.IDRequest{ID: cred.IDString()}, &c); code != "" {
		t.Fatalf("credential after restart: %s", code)
	}
	var tokens []record.Token
	admin(t, f.op, "token.list", nil, &tokens)
	if len(tokens) != 3 {
		t.Fatalf("%d tokens after restart, want 3", len(tokens))
	}
	// The unused token still opens a session.
	nc, err = sessionConn(f.v.ClientURL(), spare)
	if err != nil {
		t.Fatalf("spare token after restart: %v", err)
	}
	nc.Close()
}

func TestTwoVerifierInstances(t *testing.T) {
	f := newFleet(t, nil)
	// A second instance with the same keys, on the first one's NATS server.
	dir2 := t.TempDir()
	for _, name := range []string{"issuer.nk", "xkey.nk", "verifier.nk", "sys.nk", "operator.nk", "fleet-ca.pem", "fleet-ca-key.pem"} {
		b, err := os.ReadFile(filepath.Join(f.cfg.DataDir, name))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir2, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	cfg2 := f.cfg
	cfg2.DataDir, cfg2.NATSURL = dir2, f.v.ClientURL()
	v2, err := verifier.New(cfg2)
	if err != nil {
		t.Fatal(err)
	}
	if err := v2.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(v2.Close)
	for range 40 {
		f.token(t, time.Hour)
		nc, err := sessionConn(f.v.ClientURL(), f.token(t, time.Hour))
		if err != nil {
			t.Fatalf("callout: %v", err)
		}
		nc.Close()
	}
	n1, n2 := f.v.Served(), v2.Served()
	if n1 == 0 || n2 == 0 || n1+n2 < 120 {
		t.Fatalf("requests served: instance 1 %d, instance 2 %d; want both > 0 and 120 in all", n1, n2)
	}
	t.Logf("served: %d and %d", n1, n2)
}

func b64url(b []byte) string {
	return attestationB64(b)
}

// Replies are sent from the handler's goroutine, after micro's handler has
// returned: under -race this is where a reply that touched the request
// would race with micro's bookkeeping. Each of many concurrent requests,
// half of them refused, must get its own answer.
func TestConcurrentRepliesKeepTheirCodes(t *testing.T) {
	f := newFleet(t, nil)
	const n = 64
	errs := make(chan error, n)
	for i := range n {
		go func() {
			id := fmt.Sprintf("no-such-host-%d", i)
			op, want := "host.show", "not_found"
			if i%2 == 0 {
				op, want = "status", ""
			}
			b, _ := json.Marshal(api.IDRequest{ID: id})
			m, err := f.op.Request(api.SubjectAdminPrefix+op, b, 10*time.Second)
			switch {
			case err != nil:
				errs <- fmt.Errorf("%s: %w", op, err)
			case m.Header.Get("Nats-Service-Error-Code") != want:
				errs <- fmt.Errorf("%s %s: code %q (%s), want %q", op, id,
					m.Header.Get("Nats-Service-Error-Code"), m.Header.Get("Nats-Service-Error"), want)
			case want == "" && !json.Valid(m.Data):
				errs <- fmt.Errorf("%s: reply is not JSON: %q", op, m.Data)
			default:
				errs <- nil
			}
		}()
	}
	for range n {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
}
