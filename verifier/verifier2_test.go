package verifier_test

import (
	"context"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/fxamacker/cbor/v2"
	"github.com/google/go-attestation/attest"
	"github.com/nats-io/nats.go"

	"github.com/tpmauthn/tpmauthn/agent"
	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/attestation"
	"github.com/tpmauthn/tpmauthn/internal/fleettest"
	"github.com/tpmauthn/tpmauthn/internal/swtpmtest"
	"github.com/tpmauthn/tpmauthn/verifier/record"
)

// TestAKFromAnotherTPM: the verifier is told that TPM B's AK sits beside
// TPM A's EK. Neither TPM can answer the activation challenge.
func TestAKFromAnotherTPM(t *testing.T) {
	f := fleettest.New(t)
	tpmA := f.TPM.Open(t)
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
	tok := f.Token(t, time.Hour)
	nc, err := f.EnrollSession(tok)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	var begin api.EnrollBeginResponse
	code := fleettest.Request(t, nc, api.TokenScope(tok).Subject(api.OpEnrollBegin), api.EnrollBeginRequest{
		Hostname: "mixed", EKCert: ekA.Certificate.Raw, EKPublic: ekDER, Token: "",
		AK:  api.AKParams{Public: p.Public, CreateData: p.CreateData, CreateAttestation: p.CreateAttestation, CreateSignature: p.CreateSignature},
		TPM: api.TPMInfo{Manufacturer: info.Manufacturer, VendorString: info.VendorString, FirmwareVersion1: info.FirmwareVersion1},
	}, &begin)
	if code != "not_allowed" {
		t.Fatalf("begin without token or allow-list: code %q, want not_allowed", code)
	}
	code = fleettest.Request(t, nc, api.TokenScope(tok).Subject(api.OpEnrollBegin), api.EnrollBeginRequest{
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
		if code := fleettest.Request(t, nc, api.TokenScope(tok).Subject(api.OpEnrollFinish), api.EnrollFinishRequest{Session: begin.Session, Secret: secret}, &res); code != "activation_failed" {
			t.Fatalf("finish with TPM B's answer: code %q, want activation_failed", code)
		}
		return
	}
	if _, err := tpmA.ActivateCredential(akB, ec); err == nil {
		t.Fatal("TPM A loaded TPM B's AK")
	}
	var res api.EnrollResult
	if code := fleettest.Request(t, nc, api.TokenScope(tok).Subject(api.OpEnrollFinish), api.EnrollFinishRequest{Session: begin.Session, Secret: []byte("guess")}, &res); code != "activation_failed" {
		t.Fatalf("finish with a guessed secret: code %q, want activation_failed", code)
	}
	// The session is single-use: the right secret cannot be sent afterwards.
	if code := fleettest.Request(t, nc, api.TokenScope(tok).Subject(api.OpEnrollFinish), api.EnrollFinishRequest{Session: begin.Session, Secret: []byte("guess")}, &res); code != "not_found" {
		t.Fatalf("second finish on one session: code %q, want not_found", code)
	}
	var tokens []record.Token
	f.Admin(t, "token.list", nil, &tokens)
	for _, tk := range tokens {
		if tk.UsedBy != "" {
			t.Fatalf("a failed enrollment consumed token %s", tk.ID)
		}
	}
}

func TestForgedRegistrationDenied(t *testing.T) {
	f := fleettest.New(t)
	a := fleettest.Authenticator(t, f.TPM)
	e, err := f.Enroll(t, a, f.Token(t, time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	nc, err := f.HostSession(e)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	for _, field := range []string{"certInfo", "pubArea", "sig"} {
		var begin api.RegisterBeginResponse
		if code := fleettest.Request(t, nc, api.HostScope(e.HostID).Subject(api.OpRegisterBegin), api.RegisterBeginRequest{HostID: e.HostID, Workload: "billing"}, &begin); code != "" {
			t.Fatal(code)
		}
		resp, _, err := a.Register(agent.RegisterOptions{Name: "billing", RPID: begin.RPID, Origin: begin.Origin, Challenge: begin.Challenge, UserHandle: begin.UserHandle})
		if err != nil {
			t.Fatal(err)
		}
		forge(t, resp, field)
		var fin api.RegisterFinishResponse
		code := fleettest.Request(t, nc, api.HostScope(e.HostID).Subject(api.OpRegisterFinish), api.RegisterFinishRequest{HostID: e.HostID, Workload: "billing", Challenge: begin.Challenge, Response: resp}, &fin)
		if code != "attestation_rejected" {
			t.Fatalf("registration with a forged %s: code %q, want attestation_rejected", field, code)
		}
	}
	var creds []record.Credential
	f.Admin(t, "credential.list", api.CredentialListRequest{}, &creds)
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
	resp.Response.AttestationObject = base64.RawURLEncoding.EncodeToString(out)
}

func TestRegistrationChallengeSingleUse(t *testing.T) {
	f := fleettest.New(t)
	a := fleettest.Authenticator(t, f.TPM)
	e, err := f.Enroll(t, a, f.Token(t, time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	nc, err := f.HostSession(e)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	var begin api.RegisterBeginResponse
	if code := fleettest.Request(t, nc, api.HostScope(e.HostID).Subject(api.OpRegisterBegin), api.RegisterBeginRequest{HostID: e.HostID, Workload: "billing"}, &begin); code != "" {
		t.Fatal(code)
	}
	resp, _, err := a.Register(agent.RegisterOptions{Name: "billing", RPID: begin.RPID, Origin: begin.Origin, Challenge: begin.Challenge, UserHandle: begin.UserHandle})
	if err != nil {
		t.Fatal(err)
	}
	req := api.RegisterFinishRequest{HostID: e.HostID, Workload: "billing", Challenge: begin.Challenge, Response: resp}
	var fin api.RegisterFinishResponse
	if code := fleettest.Request(t, nc, api.HostScope(e.HostID).Subject(api.OpRegisterFinish), req, &fin); code != "" {
		t.Fatalf("first finish: %s", code)
	}
	if code := fleettest.Request(t, nc, api.HostScope(e.HostID).Subject(api.OpRegisterFinish), req, &fin); code != "challenge_invalid" {
		t.Fatalf("replayed registration: code %q, want challenge_invalid", code)
	}
	for _, bad := range []api.RegisterBeginRequest{{HostID: e.HostID, Workload: "a.b"}, {HostID: e.HostID, Workload: ""}, {HostID: "h-nope", Workload: "x"}} {
		if code := fleettest.Request(t, nc, api.HostScope(e.HostID).Subject(api.OpRegisterBegin), bad, &begin); code == "" {
			t.Fatalf("register.begin %+v accepted", bad)
		}
	}
}

func TestEKAllowList(t *testing.T) {
	f := fleettest.New(t, func(f *fleettest.Fleet) { f.Config.EKCADir = "" }) // no manufacturer roots at all
	a := fleettest.Authenticator(t, f.TPM)
	ek, err := a.TPM().EK()
	if err != nil {
		t.Fatal(err)
	}
	hash, err := attestation.EKHash(ek.Public)
	if err != nil {
		t.Fatal(err)
	}
	connect := func() (*nats.Conn, error) {
		return nats.Connect(f.URL(), nats.UserInfo(api.EKUserPrefix+hash, ""), nats.CustomInboxPrefix(api.InboxForEK(hash)), nats.MaxReconnects(0))
	}
	if _, err := connect(); err == nil {
		t.Fatal("an EK not on the allow-list got an enrollment session")
	}
	if code := f.Admin(t, "ek.allow", api.EKAllowRequest{EKHash: hash, Roles: []string{"edge"}}, nil); code != "" {
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
	fleettest.WantCode(t, err, "already_enrolled")
}

func TestRestartKeepsState(t *testing.T) {
	f := fleettest.New(t)
	a := fleettest.Authenticator(t, f.TPM)
	e, err := f.Enroll(t, a, f.Token(t, time.Hour, "demo"))
	if err != nil {
		t.Fatal(err)
	}
	nc, err := f.HostSession(e)
	if err != nil {
		t.Fatal(err)
	}
	cred, err := a.RegisterWithVerifier(context.Background(), nc, "billing")
	nc.Close()
	if err != nil {
		t.Fatal(err)
	}
	spare := f.Token(t, time.Hour)
	caBefore := f.Verifier.Keys().FleetCA.Raw

	f.Verifier.Close()
	f.Start(t) // same data dir
	if string(f.Verifier.Keys().FleetCA.Raw) != string(caBefore) {
		t.Fatal("fleet CA changed across restart")
	}
	var h record.Host
	if code := f.Admin(t, "host.show", api.IDRequest{ID: e.HostID}, &h); code != "" || h.Status != api.HostActive {
		t.Fatalf("host after restart: %s %+v", code, h)
	}
	var c record.Credential
	if code := f.Admin(t, "credential.show", api.IDRequest{ID: cred.IDString()}, &c); code != "" {
		t.Fatalf("credential after restart: %s", code)
	}
	var tokens []record.Token
	f.Admin(t, "token.list", nil, &tokens)
	if len(tokens) != 2 {
		t.Fatalf("%d tokens after restart, want 2", len(tokens))
	}
	// The unused token still opens a session.
	nc, err = f.EnrollSession(spare)
	if err != nil {
		t.Fatalf("spare token after restart: %v", err)
	}
	nc.Close()
}

func TestTwoVerifierInstances(t *testing.T) {
	f := fleettest.New(t)
	// A second instance with the same keys, on the first one's NATS server.
	dir2 := t.TempDir()
	fleettest.CopyKeys(t, f.Config.DataDir, dir2)
	cfg2 := f.Config
	cfg2.DataDir, cfg2.NATSURL = dir2, f.URL()
	v2 := fleettest.StartVerifier(t, cfg2)
	for range 40 {
		f.Token(t, time.Hour)
		nc, err := f.EnrollSession(f.Token(t, time.Hour))
		if err != nil {
			t.Fatalf("callout: %v", err)
		}
		nc.Close()
	}
	n1, n2 := f.Verifier.Served(), v2.Served()
	if n1 == 0 || n2 == 0 || n1+n2 < 120 {
		t.Fatalf("requests served: instance 1 %d, instance 2 %d; want both > 0 and 120 in all", n1, n2)
	}
	t.Logf("served: %d and %d", n1, n2)
}

// Replies are sent from the handler's goroutine, after micro's handler has
// returned: under -race this is where a reply that touched the request
// would race with micro's bookkeeping. Each of many concurrent requests,
// half of them refused, must get its own answer.
func TestConcurrentRepliesKeepTheirCodes(t *testing.T) {
	f := fleettest.New(t)
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
			m, err := f.Op.Request(api.SubjectAdminPrefix+op, b, 10*time.Second)
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
