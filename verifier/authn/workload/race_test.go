package workload

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"

	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/attestation"
	"github.com/tpmauthn/tpmauthn/audit"
	"github.com/tpmauthn/tpmauthn/verifier/authn"
	"github.com/tpmauthn/tpmauthn/verifier/fleet"
	"github.com/tpmauthn/tpmauthn/verifier/internal/testenv"
	"github.com/tpmauthn/tpmauthn/verifier/policy"
	"github.com/tpmauthn/tpmauthn/verifier/record"
	"github.com/tpmauthn/tpmauthn/verifier/sessions"
	"github.com/tpmauthn/tpmauthn/verifier/store"
)

const raceRPID = "tpmauthn.local"

// instance is one verifier's method over the shared JetStream: its own
// connection, store handles and fleet cache, as a second process has.
func instance(t *testing.T, e *testenv.Env, ps *policy.Source, al alerter) *Method {
	t.Helper()
	nc, err := nats.Connect(e.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	st, err := store.Open(t.Context(), nc, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	f := fleet.New(st, nil)
	if err := f.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.Close)
	return New(Config{Fleet: f, Sessions: sessions.New(sessions.Config{Fleet: f, Trail: e.Trail}), Policy: ps, RPID: raceRPID, Alerts: al})
}

// connect is an authorization request presenting a bundle signed by key for
// counter over a nonce of its own.
func connect(t *testing.T, id []byte, key *ecdsa.PrivateKey, counter uint32) *authn.Request {
	t.Helper()
	nonce := make([]byte, 16)
	_, _ = rand.Read(nonce)
	nonceStr := base64.RawURLEncoding.EncodeToString(nonce)
	ad := attestation.NewAuthenticatorData(raceRPID, counter).Marshal()
	cdj, err := attestation.NewClientDataJSON(attestation.TypeGet, attestation.NATSChallenge([]byte(nonceStr)), attestation.VerifierOrigin(raceRPID))
	if err != nil {
		t.Fatal(err)
	}
	d := sha256.Sum256(attestation.SignedData(ad, cdj))
	sig, err := ecdsa.SignASN1(rand.Reader, key, d[:])
	if err != nil {
		t.Fatal(err)
	}
	b, err := attestation.MarshalBundle(&attestation.Assertion{CredentialID: id, AuthData: ad, ClientDataJSON: cdj, Signature: sig})
	if err != nil {
		t.Fatal(err)
	}
	user, _ := nkeys.CreateUser()
	userPub, _ := user.PublicKey()
	rc := jwt.NewAuthorizationRequestClaims(userPub)
	rc.UserNkey = userPub
	rc.Server.ID = "NSERVER"
	rc.ClientInformation.Nonce = nonceStr
	rc.ClientInformation.ID = uint64(counter)
	rc.ConnectOptions.Nkey = base64.RawURLEncoding.EncodeToString(id)
	rc.ConnectOptions.SignedNonce = base64.RawURLEncoding.EncodeToString(b)
	ev := audit.Deny("connect")
	return &authn.Request{Claims: rc, Event: &ev}
}

// Two verifier instances on one JetStream decide connects that present the
// same counter value of one credential at the same moment (a cloned key
// store): exactly one is granted; the other is refused as a replay (and the
// credential quarantined), never both. The only thing ordering them is the
// credential's compare-and-set: each instance serializes only its own.
func TestAttackTwoInstancesRaceOneCounter(t *testing.T) {
	e := testenv.New(t)
	path := filepath.Join(t.TempDir(), "policy.yaml")
	if err := os.WriteFile(path, []byte("session_ttl: 10m\nroles:\n  r:\n    publish: {allow: [\"x.>\"]}\nbindings:\n  - host_roles: [r]\n    roles: [r]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ps, err := policy.NewSource(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC()
	h := record.Host{V: record.Version, ID: "h-race", Hostname: "race", Roles: []string{"r"}, Status: api.HostActive, Created: now, Updated: now}
	hb, _ := json.Marshal(h)
	if _, err := e.Store.Hosts.Put(t.Context(), h.ID, hb); err != nil {
		t.Fatal(err)
	}
	var al alerts
	a, b := instance(t, e, ps, &al), instance(t, e, ps, &al)
	const creds = 12
	for i := range creds {
		t.Run(fmt.Sprintf("cred%d", i), func(t *testing.T) {
			key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			pt, _ := key.PublicKey.Bytes()
			cose, err := attestation.EncodeCOSEKey(pt[1:33], pt[33:65])
			if err != nil {
				t.Fatal(err)
			}
			id := make([]byte, 16)
			_, _ = rand.Read(id)
			c := record.Credential{V: record.Version, ID: base64.RawURLEncoding.EncodeToString(id), Host: h.ID, Workload: fmt.Sprintf("w%d", i),
				PublicKey: cose, Status: api.CredentialActive, Created: now, Updated: now}
			if err := store.Create(t.Context(), e.Store.Credentials, c.ID, c); err != nil {
				t.Fatal(err)
			}
			// Both instances have read (and cached) the credential before
			// the race, as instances that served it before would have.
			for n, m := range []*Method{a, b} {
				if _, err := m.Authorize(t.Context(), connect(t, id, key, uint32(n+1))); err != nil {
					t.Fatal(err)
				}
			}
			reqs := []*authn.Request{connect(t, id, key, 7), connect(t, id, key, 7)}
			errs := make([]error, 2)
			start := make(chan struct{})
			var wg sync.WaitGroup
			for j, m := range []*Method{a, b} {
				wg.Go(func() {
					<-start
					_, errs[j] = m.Authorize(t.Context(), reqs[j])
				})
			}
			close(start)
			wg.Wait()
			granted := 0
			for _, err := range errs {
				switch {
				case err == nil:
					granted++
				case !errors.Is(err, api.ErrReplay):
					t.Fatalf("refused for another reason: %v", err)
				}
			}
			if granted != 1 {
				t.Fatalf("counter 7 granted %d times (errors %v), want exactly once", granted, errs)
			}
			if got := e.Credential(t, c.ID); got.Status != api.CredentialQuarantined {
				t.Fatalf("after a replayed counter the credential is %s, want quarantined", got.Status)
			}
		})
	}
}
