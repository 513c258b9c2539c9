package passkey

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/attestation"
	"github.com/tpmauthn/tpmauthn/verifier/internal/testenv"
	"github.com/tpmauthn/tpmauthn/verifier/oidclogin"
	"github.com/tpmauthn/tpmauthn/verifier/people"
	"github.com/tpmauthn/tpmauthn/verifier/policy"
	"github.com/tpmauthn/tpmauthn/verifier/record"
)

const (
	testOrigin = "http://localhost:8080"
	testPolicy = `
roles:
  dev: {publish: {allow: ["dev.{{person}}.>"]}}
people:
  idps: [{name: okta, issuer: "https://okta.example.com", client_id: c, client_secret_env: S}]
  bindings: [{roles: [dev]}]
`
)

type fixture struct {
	t    *testing.T
	env  *testenv.Env
	ppl  *people.Service
	h    *Handler
	mux  *http.ServeMux
	pol  *policy.Policy
	keys map[string]*ecdsa.PrivateKey // passkeys' private keys by credential ID
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	pol, err := policy.Parse([]byte(testPolicy))
	if err != nil {
		t.Fatal(err)
	}
	env := testenv.New(t)
	polf := func() *policy.Policy { return pol }
	ppl := people.New(people.Config{Store: env.Store, Policy: polf, Trail: env.Trail})
	login := oidclogin.New(oidclogin.Config{People: ppl, Store: env.Store, Policy: polf, PublicURL: testOrigin})
	h, err := New(Config{Store: env.Store, Fleet: env.Fleet, People: ppl, Policy: polf, Trail: env.Trail, Guard: login,
		PublicURL: testOrigin, WebsocketURL: "ws://localhost:8081"})
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{t: t, env: env, ppl: ppl, h: h, mux: http.NewServeMux(), pol: pol, keys: map[string]*ecdsa.PrivateKey{}}
	h.Register(f.mux)
	return f
}

func (f *fixture) person(subject string) *record.Person {
	f.t.Helper()
	p, err := f.ppl.Login(f.t.Context(), people.Identity{IdP: "okta", Issuer: "https://okta.example.com", SubjectClaim: "sub", Subject: subject, Name: subject}, record.FlowBrowser, "")
	if err != nil {
		f.t.Fatal(err)
	}
	return p
}

// passkey stores a passkey of p whose private key the fixture keeps.
func (f *fixture) passkey(p *record.Person) *record.Credential {
	f.t.Helper()
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	cose, err := attestation.EncodeCOSEKey(k.X.FillBytes(make([]byte, 32)), k.Y.FillBytes(make([]byte, 32)))
	if err != nil {
		f.t.Fatal(err)
	}
	id := make([]byte, 32)
	_, _ = rand.Read(id)
	c := &record.Credential{V: record.Version, ID: base64.RawURLEncoding.EncodeToString(id), PublicKey: cose, UserHandle: UserHandle(p.ID),
		Status: api.CredentialActive, Person: p.ID, Kind: record.KindPasskey, Assurance: policy.AssuranceHardware, Counter: 1}
	if err := f.h.storeLinked(f.t.Context(), p, c); err != nil {
		f.t.Fatal(err)
	}
	f.keys[c.ID] = k
	return c
}

// cookie is a web session cookie of p (signed in with passkey, or at the
// IdP if "").
func (f *fixture) cookie(p *record.Person, passkey string, expires time.Time) *http.Cookie {
	w := httptest.NewRecorder()
	f.h.startSession(w, p, passkey, expires)
	return w.Result().Cookies()[0]
}

// do sends a request as a page of the verifier's origin would.
func (f *fixture) do(method, target string, c *http.Cookie, body any) *httptest.ResponseRecorder {
	var r *http.Request
	switch b := body.(type) {
	case url.Values:
		r = httptest.NewRequest(method, target, strings.NewReader(b.Encode()))
		r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	case nil:
		r = httptest.NewRequest(method, target, nil)
	default:
		j, _ := json.Marshal(b)
		r = httptest.NewRequest(method, target, bytes.NewReader(j))
		r.Header.Set("Content-Type", "application/json")
	}
	r.Header.Set("Origin", testOrigin)
	if c != nil {
		r.AddCookie(c)
	}
	w := httptest.NewRecorder()
	f.mux.ServeHTTP(w, r)
	return w
}

// assertion is what an authenticator holding pk's key answers for
// challenge, as the bundle.
type assertion struct {
	origin string
	flags  byte
	rpID   string
}

func (f *fixture) sign(pk *record.Credential, challenge []byte, o assertion) string {
	f.t.Helper()
	if o.origin == "" {
		o.origin = testOrigin
	}
	if o.flags == 0 {
		o.flags = attestation.FlagUserPresent | attestation.FlagUserVerified
	}
	if o.rpID == "" {
		o.rpID = "localhost"
	}
	rp := sha256.Sum256([]byte(o.rpID))
	ad := append(append(rp[:], o.flags), binary.BigEndian.AppendUint32(nil, 7)...)
	cd, _ := json.Marshal(map[string]any{"type": "webauthn.get", "challenge": base64.RawURLEncoding.EncodeToString(challenge), "origin": o.origin, "crossOrigin": false})
	digest := sha256.Sum256(attestation.SignedData(ad, cd))
	sig, err := ecdsa.SignASN1(rand.Reader, f.keys[pk.ID], digest[:])
	if err != nil {
		f.t.Fatal(err)
	}
	id, _ := base64.RawURLEncoding.DecodeString(pk.ID)
	b, err := attestation.MarshalBundle(&attestation.Assertion{CredentialID: id, AuthData: ad, ClientDataJSON: cd, Signature: sig})
	if err != nil {
		f.t.Fatal(err)
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

func spki(t *testing.T) []byte {
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	b, err := x509.MarshalPKIXPublicKey(&k.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestSession: the cookie is refused tampered, expired, for a disabled
// person, and for a passkey sign-in whose passkey is no longer active.
func TestSession(t *testing.T) {
	f := newFixture(t)
	p := f.person("s1")
	pk := f.passkey(p)
	now := time.Now()
	current := func(c *http.Cookie) error {
		r := httptest.NewRequest(http.MethodGet, "/", nil)
		r.AddCookie(c)
		_, _, err := f.h.Current(r)
		return err
	}
	ok := f.cookie(p, pk.ID, now.Add(time.Hour))
	if err := current(ok); err != nil {
		t.Fatalf("valid session: %v", err)
	}
	tampered := *ok
	body, mac, _ := strings.Cut(ok.Value, ".")
	raw, _ := base64.RawURLEncoding.DecodeString(body)
	tampered.Value = base64.RawURLEncoding.EncodeToString(bytes.Replace(raw, []byte(p.ID), []byte(f.person("s2").ID), 1)) + "." + mac
	for _, tc := range []struct {
		name string
		c    *http.Cookie
	}{
		{"tampered", &tampered},
		{"expired", f.cookie(p, "", now.Add(-time.Second))},
		{"otherVerifier", func() *http.Cookie { g := newFixture(t); return g.cookie(g.person("s1"), "", now.Add(time.Hour)) }()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := current(tc.c); !errors.Is(err, ErrNoSession) {
				t.Fatalf("Current = %v, want ErrNoSession", err)
			}
		})
	}
	if _, err := f.env.Fleet.SetCredentialStatus(t.Context(), pk.ID, api.CredentialRevoked, "test", nil); err != nil {
		t.Fatal(err)
	}
	if err := current(ok); !errors.Is(err, ErrNoSession) {
		t.Fatalf("session of a revoked passkey: %v", err)
	}
	idp := f.cookie(p, "", now.Add(time.Hour))
	if err := f.ppl.Disable(t.Context(), p.ID, "left", "test"); err != nil {
		t.Fatal(err)
	}
	if err := current(idp); !errors.Is(err, ErrNoSession) {
		t.Fatalf("session of a disabled person: %v", err)
	}
}

// TestSessionKey: a passkey's certification of a session key is accepted
// only over this ceremony's challenge (the key's SPKI and the verifier's
// nonce), from the pages' origin and RP ID, user verified, by the signed-in
// person's own active passkey, once.
func TestSessionKey(t *testing.T) {
	f := newFixture(t)
	p, other := f.person("k1"), f.person("k2")
	pk, otherPK := f.passkey(p), f.passkey(other)
	c := f.cookie(p, "", time.Now().Add(time.Hour))
	begin := func(key []byte) (string, []byte) {
		t.Helper()
		w := f.do(http.MethodPost, pathSessionBegin, c, map[string]string{"spki": base64.RawURLEncoding.EncodeToString(key)})
		var res struct{ Ceremony, Challenge string }
		if w.Code != http.StatusOK || json.Unmarshal(w.Body.Bytes(), &res) != nil {
			t.Fatalf("begin: %d %s", w.Code, w.Body)
		}
		ch, _ := base64.RawURLEncoding.DecodeString(res.Challenge)
		return res.Ceremony, ch
	}
	finish := func(ceremony, bundle string) *httptest.ResponseRecorder {
		return f.do(http.MethodPost, pathSessionFinish+"?ceremony="+url.QueryEscape(ceremony), c, map[string]string{"bundle": bundle})
	}
	for _, tc := range []struct {
		name string
		sign func(challenge []byte) string
		want int
	}{
		{"otherKey", func([]byte) string { return f.sign(pk, SessionKeyChallenge(spki(t), make([]byte, 32)), assertion{}) }, http.StatusBadRequest},
		{"natsChallenge", func(ch []byte) string { return f.sign(pk, attestation.NATSChallenge(ch), assertion{}) }, http.StatusBadRequest},
		{"otherOrigin", func(ch []byte) string { return f.sign(pk, ch, assertion{origin: "https://evil.example.com"}) }, http.StatusBadRequest},
		{"otherRPID", func(ch []byte) string { return f.sign(pk, ch, assertion{rpID: "evil.example.com"}) }, http.StatusBadRequest},
		{"notVerified", func(ch []byte) string { return f.sign(pk, ch, assertion{flags: attestation.FlagUserPresent}) }, http.StatusBadRequest},
		{"othersPasskey", func(ch []byte) string { return f.sign(otherPK, ch, assertion{}) }, http.StatusForbidden},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cer, ch := begin(spki(t))
			if w := finish(cer, tc.sign(ch)); w.Code != tc.want {
				t.Fatalf("finish: %d %s, want %d", w.Code, w.Body, tc.want)
			}
		})
	}
	key := spki(t)
	cer, ch := begin(key)
	bundle := f.sign(pk, ch, assertion{})
	w := finish(cer, bundle)
	var res struct{ ID string }
	if w.Code != http.StatusOK || json.Unmarshal(w.Body.Bytes(), &res) != nil {
		t.Fatalf("finish: %d %s", w.Code, w.Body)
	}
	sk := f.env.Credential(t, res.ID)
	if sk.Kind != record.KindSessionKey || sk.Certifier != pk.ID || sk.Person != p.ID || sk.Assurance != policy.AssuranceSoftware || sk.Expires.IsZero() || !sk.Browser() {
		t.Fatalf("session key %+v", sk)
	}
	if w := finish(cer, bundle); w.Code != http.StatusBadRequest {
		t.Fatalf("the ceremony used again: %d", w.Code)
	}
	p, _ = f.ppl.Person(t.Context(), p.ID)
	if !strings.Contains(strings.Join(p.Credentials, " "), sk.ID) {
		t.Fatalf("the session key is not listed with its person: %v", p.Credentials)
	}

	// The connect path: a session key passes while its passkey is active.
	chk, err := NewChecker(testOrigin, f.env.Store.Credentials)
	if err != nil {
		t.Fatal(err)
	}
	want, err := chk.Check(t.Context(), sk)
	if err != nil || want.Origin != testOrigin || want.RPIDHash != sha256.Sum256([]byte("localhost")) {
		t.Fatalf("Check = %+v, %v", want, err)
	}
	stolen := *sk
	stolen.Certifier = otherPK.ID
	if _, err := chk.Check(t.Context(), &stolen); !errors.Is(err, api.ErrRevoked) {
		t.Fatalf("a session key naming another person's passkey: %v", err)
	}

	// Its passkey revoked by an operator: the cascade revokes the session
	// key (kicking its sessions), and the connect path refuses it anyway.
	cascade, err := f.h.StartCascade(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer cascade.Close()
	if _, err := f.env.Fleet.SetCredentialStatus(t.Context(), pk.ID, api.CredentialRevoked, "operator", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := chk.Check(t.Context(), sk); !errors.Is(err, api.ErrRevoked) {
		t.Fatalf("a session key of a revoked passkey: %v", err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for f.env.Credential(t, sk.ID).Status != api.CredentialRevoked {
		if time.Now().After(deadline) {
			t.Fatal("the session key of a revoked passkey is still active")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestForms: a form without its token, a JSON request that is not JSON or
// from another origin, are refused; signing out revokes the session's
// session keys.
func TestForms(t *testing.T) {
	f := newFixture(t)
	p := f.person("f1")
	pk := f.passkey(p)
	c := f.cookie(p, "", time.Now().Add(time.Hour))
	if w := f.do(http.MethodPost, pathRemove, c, url.Values{"id": {pk.ID}}); w.Code != http.StatusForbidden {
		t.Fatalf("remove without a token: %d", w.Code)
	}
	r := httptest.NewRequest(http.MethodPost, pathRegisterBegin, strings.NewReader("{}"))
	r.AddCookie(c)
	r.Header.Set("Origin", testOrigin)
	r.Header.Set("Content-Type", "text/plain")
	w := httptest.NewRecorder()
	f.mux.ServeHTTP(w, r)
	if w.Code != http.StatusBadRequest {
		t.Fatalf("register begin as text/plain: %d", w.Code)
	}
	r.Header.Set("Origin", "https://evil.example.com")
	r.Header.Set("Content-Type", "application/json")
	w = httptest.NewRecorder()
	f.mux.ServeHTTP(w, r)
	if w.Code != http.StatusForbidden {
		t.Fatalf("register begin from another origin: %d", w.Code)
	}
	if st := f.env.Credential(t, pk.ID).Status; st != api.CredentialActive {
		t.Fatalf("passkey %s", st)
	}
	token := f.h.cfg.Guard.FormToken(c.Value)
	if w := f.do(http.MethodPost, pathRemove, c, url.Values{"id": {pk.ID}, "csrf": {token}}); w.Code != http.StatusSeeOther {
		t.Fatalf("remove: %d %s", w.Code, w.Body)
	}
	if st := f.env.Credential(t, pk.ID).Status; st != api.CredentialRevoked {
		t.Fatalf("removed passkey %s", st)
	}

	// Sign-out: the session keys certified in this web session go.
	pk2 := f.passkey(p)
	var s Session
	body, _, _ := strings.Cut(c.Value, ".")
	raw, _ := base64.RawURLEncoding.DecodeString(body)
	_ = json.Unmarshal(raw, &s)
	sk := &record.Credential{V: record.Version, ID: "sk-f1", Person: p.ID, Kind: record.KindSessionKey, Certifier: pk2.ID,
		Status: api.CredentialActive, WebSession: record.SecretKey(s.Nonce), Expires: time.Now().Add(time.Hour)}
	other := &record.Credential{V: record.Version, ID: "sk-f1-other", Person: p.ID, Kind: record.KindSessionKey, Certifier: pk2.ID,
		Status: api.CredentialActive, WebSession: "another", Expires: time.Now().Add(time.Hour)}
	for _, k := range []*record.Credential{sk, other} {
		if err := f.h.storeLinked(t.Context(), p, k); err != nil {
			t.Fatal(err)
		}
	}
	if w := f.do(http.MethodPost, PathSignOut, c, url.Values{}); w.Code != http.StatusSeeOther {
		t.Fatalf("sign out: %d", w.Code)
	}
	if a, b := f.env.Credential(t, sk.ID).Status, f.env.Credential(t, other.ID).Status; a != api.CredentialRevoked || b != api.CredentialActive {
		t.Fatalf("after sign-out: this session's key %s, another's %s", a, b)
	}
}

// TestRPID: passkeys need a host name.
func TestRPID(t *testing.T) {
	for in, ok := range map[string]bool{"http://localhost:8080": true, "https://ops.example.com": true, "http://127.0.0.1:8080": false, "https://[::1]:443": false} {
		if _, err := RPIDOf(in); (err == nil) != ok {
			t.Errorf("RPIDOf(%q) = %v", in, err)
		}
	}
}
