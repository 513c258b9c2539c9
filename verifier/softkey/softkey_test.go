package softkey

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/audit"
	"github.com/tpmauthn/tpmauthn/personkey"
	"github.com/tpmauthn/tpmauthn/verifier/internal/testenv"
	"github.com/tpmauthn/tpmauthn/verifier/people"
	"github.com/tpmauthn/tpmauthn/verifier/policy"
	"github.com/tpmauthn/tpmauthn/verifier/record"
)

const testPolicy = `
roles:
  dev: {publish: {allow: ["dev.{{person}}.>"]}}
people:
  login_ttl: 8h
  idps:
    - {name: okta, issuer: "https://okta.example.com", client_id: c, client_secret_env: S}
  bindings:
    - {idp: okta, groups: [developers], roles: [dev]}
`

type fixture struct {
	env *testenv.Env
	svc *people.Service
	srv *httptest.Server
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	pol, err := policy.Parse([]byte(testPolicy))
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{env: testenv.New(t)}
	f.svc = people.New(people.Config{Store: f.env.Store, Policy: func() *policy.Policy { return pol }, Trail: f.env.Trail, Now: time.Now})
	mux := http.NewServeMux()
	New(Config{People: f.svc, RPID: "tpmauthn", NATSURL: "nats://127.0.0.1:4222", Trail: f.env.Trail}).Register(mux)
	f.srv = httptest.NewServer(mux)
	t.Cleanup(f.srv.Close)
	return f
}

// grant logs a person in and returns a login grant bound to bound.
func (f *fixture) grant(t *testing.T, bound *record.GrantBinding) string {
	t.Helper()
	id := people.Identity{IdP: "okta", Issuer: "https://okta.example.com", SubjectClaim: "sub", Subject: "00u1", Groups: []string{"developers"}}
	p, err := f.svc.Login(t.Context(), id, record.FlowLoopback, "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	res, err := f.svc.Grant(t.Context(), p, record.FlowLoopback, "127.0.0.1", bound)
	if err != nil {
		t.Fatal(err)
	}
	return res.AccessToken
}

// key is a software key, its thumbprint, and a registration request with a
// proof of possession over grant.
func key(t *testing.T) (*ecdsa.PrivateKey, string) {
	t.Helper()
	priv, err := personkey.Generate()
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKIXPublicKey(&priv.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	return priv, personkey.Thumbprint(der)
}

func (f *fixture) post(t *testing.T, grant string, priv *ecdsa.PrivateKey) (int, string) {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(&priv.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	proof, err := ecdsa.SignASN1(rand.Reader, priv, personkey.ProofDigest(grant))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := json.Marshal(api.PersonKeyRequest{PublicKey: der, Proof: proof})
	req, _ := http.NewRequest(http.MethodPost, f.srv.URL+api.PathPersonKey, bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+grant)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	_, _ = b.ReadFrom(resp.Body)
	return resp.StatusCode, b.String()
}

// TestKeyRedeemsOnlyItsOwnGrant: a grant bound to a software key's
// thumbprint registers that key; the same grant shown with another key
// (whoever copied it from a terminal, with a key of their own) is refused,
// audited, and spent, so the rightful key cannot use it after either; a
// grant bound to a host's agent is not redeemed here at all.
func TestKeyRedeemsOnlyItsOwnGrant(t *testing.T) {
	t.Run("its key", func(t *testing.T) {
		f := newFixture(t)
		priv, thumb := key(t)
		grant := f.grant(t, &record.GrantBinding{Key: thumb})
		code, body := f.post(t, grant, priv)
		var res api.PersonKeyResponse
		if code != http.StatusOK || json.Unmarshal([]byte(body), &res) != nil || res.CredentialID == "" {
			t.Fatalf("the grant's own key: %d %s", code, body)
		}
		if c := f.env.Credential(t, res.CredentialID); c.Person != res.Person.ID || c.Assurance != policy.AssuranceSoftware {
			t.Fatalf("credential %+v", c)
		}
		if code, body := f.post(t, grant, priv); code != http.StatusForbidden {
			t.Fatalf("the grant again: %d %s, want 403", code, body)
		}
	})
	t.Run("another key", func(t *testing.T) {
		f := newFixture(t)
		priv, thumb := key(t)
		grant := f.grant(t, &record.GrantBinding{Key: thumb})
		thief, _ := key(t)
		if code, body := f.post(t, grant, thief); code != http.StatusForbidden {
			t.Fatalf("another key: %d %s, want 403", code, body)
		}
		ev, err := f.env.LastEvent(t)
		if err != nil || ev.Kind != "person.grant.redeem" || ev.Result == audit.OK {
			t.Fatalf("audit of the misplaced grant: %+v %v", ev, err)
		}
		if code, body := f.post(t, grant, priv); code != http.StatusForbidden {
			t.Fatalf("the rightful key after the thief: %d %s, want 403 (the grant is spent)", code, body)
		}
	})
	t.Run("a host's grant", func(t *testing.T) {
		f := newFixture(t)
		priv, _ := key(t)
		grant := f.grant(t, &record.GrantBinding{Host: "h-0011223344556677", UID: 1003})
		if code, body := f.post(t, grant, priv); code != http.StatusForbidden || !strings.Contains(body, "grant") {
			t.Fatalf("a host's grant as a software key: %d %s, want 403", code, body)
		}
	})
}
