package verifier_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tpmauthn/tpmauthn/agent/client"
	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/audit"
	"github.com/tpmauthn/tpmauthn/internal/eventually"
	"github.com/tpmauthn/tpmauthn/internal/fleettest"
	"github.com/tpmauthn/tpmauthn/internal/oidctest"
	"github.com/tpmauthn/tpmauthn/verifier/offboard"
	"github.com/tpmauthn/tpmauthn/verifier/record"
	"github.com/tpmauthn/tpmauthn/verifier/store"
)

const (
	scimOkta  = "okta-scim-token-0123456789abcdef"
	scimEntra = "entra-scim-token-0123456789abcdef"
)

// peopleFleet is a fleet whose verifier serves logins and SCIM for two
// IdPs (in-process OpenID providers): okta (user u1, dana) and entra
// (subject claim oid; user e1, erin, oid obj-e1).
type peopleFleet struct {
	*fleettest.Fleet
	okta, entra *oidctest.OP
	clock       *testClock
}

func newPeopleFleet(t *testing.T) *peopleFleet {
	t.Helper()
	fleettest.Require(t)
	pf := &peopleFleet{clock: &testClock{now: time.Now()},
		okta:  oidctest.Start(t, oidctest.User{ID: "u1", Username: "dana", Password: "pw", Name: "Dana", Groups: []string{"developers", "ops"}}),
		entra: oidctest.Start(t, oidctest.User{ID: "e1", Username: "erin", Password: "pw", Name: "Erin", Groups: []string{"developers"}, Claims: map[string]any{"oid": "obj-e1"}}),
	}
	dir := t.TempDir()
	files := map[string]string{"secret": "s3cret", "okta-scim": scimOkta, "entra-scim": scimEntra}
	for name, v := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(v+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	pol := filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(pol, fmt.Appendf(nil, `session_ttl: 1m
roles:
  demo:
    publish: {allow: ["demo.>"]}
    subscribe: {allow: ["demo.>"]}
  dev: {publish: {allow: ["dev.>"]}}
  ops: {publish: {allow: ["ops.>"]}}
bindings:
  - host_roles: [demo]
    roles: [demo]
people:
  idps:
    - {name: okta, issuer: %q, client_id: tpmauthn, client_secret_file: %q, scim_token_file: %q}
    - {name: entra, issuer: %q, client_id: tpmauthn, client_secret_file: %q, scim_token_file: %q, subject_claim: oid}
  bindings:
    - {idp: okta, groups: [developers], roles: [dev]}
    - {idp: okta, groups: [ops], roles: [ops]}
    - {idp: entra, groups: [developers], roles: [dev]}
`, pf.okta.Issuer, filepath.Join(dir, "secret"), filepath.Join(dir, "okta-scim"),
		pf.entra.Issuer, filepath.Join(dir, "secret"), filepath.Join(dir, "entra-scim")), 0o600); err != nil {
		t.Fatal(err)
	}
	pf.Fleet = fleettest.New(t, fleettest.WithRoot(), func(f *fleettest.Fleet) {
		f.Config.HTTPListen, f.Config.PolicyFile, f.Config.Clock = "127.0.0.1:0", pol, pf.clock.Now
	})
	for _, op := range []*oidctest.OP{pf.okta, pf.entra} {
		op.AddClient("tpmauthn", "s3cret", pf.Verifier.HTTPURL()+api.PathOIDCCallback)
	}
	return pf
}

// login logs username in at idp in a browser and returns the person's ID.
func (pf *peopleFleet) login(t *testing.T, op *oidctest.OP, idp, username, subject string) string {
	t.Helper()
	b := oidctest.Browser(t)
	cb := op.Authorize(t, b, pf.Verifier.HTTPURL()+api.PathLogin+idp, username, "pw")
	resp, err := b.Get(cb.String())
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("login callback: %s: %s", resp.Status, body)
	}
	id := record.PersonID(idp, subject)
	p, err := pf.Verifier.People().Person(t.Context(), id)
	if err != nil || len(p.RefreshToken) == 0 {
		t.Fatalf("person %s after login: %+v %v (want a sealed refresh token)", id, p, err)
	}
	return id
}

// session is a live NATS session of a credential that acts for person id:
// a host's workload credential (a real TPM key, a real connect through the
// callout) marked as the person's in the store, as the person's device
// credential registration marks its own.
type session struct {
	host   *fleettest.Host
	nc     *nats.Conn
	cred   string
	closed atomic.Pointer[time.Time]
}

func (pf *peopleFleet) session(t *testing.T, id string) *session {
	t.Helper()
	s := &session{host: pf.NewHost(t)}
	who, err := client.New(s.host.Socket).WhoAmI(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	s.cred = who.CredentialID
	pf.rootMutate(t, store.BucketCredentials, s.cred, func(m map[string]any) {
		// A person's credential ends with their login; it is a TPM key.
		m["person"], m["expires"], m["assurance"] = id, time.Now().Add(time.Hour).UTC().Format(time.RFC3339Nano), "hardware"
	})
	pf.rootMutate(t, store.BucketPeople, id, func(m map[string]any) {
		cs, _ := m["credentials"].([]any)
		m["credentials"] = append(cs, s.cred)
	})
	s.connect(t)
	return s
}

func (s *session) connect(t *testing.T) {
	t.Helper()
	s.closed.Store(nil)
	nc, err := s.host.Connect(t, nats.ClosedHandler(func(*nats.Conn) {
		now := time.Now()
		s.closed.Store(&now)
	}))
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(nc.Close)
	s.nc = nc
}

// droppedWithin waits for the session to be dropped and returns how long
// after since it was.
func (s *session) droppedWithin(t *testing.T, since time.Time, limit time.Duration) time.Duration {
	t.Helper()
	eventually.Until(t, 5*time.Second, func() error {
		if s.closed.Load() == nil {
			return errors.New("session still up")
		}
		return nil
	})
	took := s.closed.Load().Sub(since)
	if took > limit {
		t.Errorf("session dropped %v after the request, want within %v", took, limit)
	}
	return took
}

// rootMutate changes a record as an administrator outside the product.
func (pf *peopleFleet) rootMutate(t *testing.T, bucket, key string, f func(map[string]any)) {
	t.Helper()
	kv, err := pf.RootJS.KeyValue(t.Context(), bucket)
	if err != nil {
		t.Fatal(err)
	}
	e, err := kv.Get(t.Context(), key)
	if err != nil {
		t.Fatalf("%s/%s: %v", bucket, key, err)
	}
	var m map[string]any
	if err := json.Unmarshal(e.Value(), &m); err != nil {
		t.Fatal(err)
	}
	f(m)
	b, _ := json.Marshal(m)
	if _, err := kv.Update(t.Context(), key, b, e.Revision()); err != nil && !errors.Is(err, jetstream.ErrKeyExists) {
		t.Fatal(err)
	}
}

func (pf *peopleFleet) scim(t *testing.T, method, path, token, body string) int {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, pf.Verifier.HTTPURL()+"/scim/v2/"+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/scim+json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		t.Logf("SCIM %s %s: %s: %s", method, path, resp.Status, b)
	}
	return resp.StatusCode
}

func (pf *peopleFleet) person(t *testing.T, id string) *record.Person {
	t.Helper()
	p, err := pf.Verifier.People().Person(t.Context(), id)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func (pf *peopleFleet) credential(t *testing.T, id string) *record.Credential {
	t.Helper()
	var c record.Credential
	pf.MustAdmin(t, "credential.show", api.IDRequest{ID: id}, &c)
	return &c
}

// wantOffboarded: disabled, credential revoked, reconnect refused.
func (pf *peopleFleet) wantOffboarded(t *testing.T, id string, s *session) {
	t.Helper()
	if p := pf.person(t, id); p.Disabled.IsZero() || len(p.RefreshToken) != 0 {
		t.Fatalf("person %s: disabled %v, refresh token kept %v", id, p.Disabled, len(p.RefreshToken) != 0)
	}
	if c := pf.credential(t, s.cred); c.Status != api.CredentialRevoked {
		t.Fatalf("credential %s is %s, want revoked", s.cred, c.Status)
	}
	if _, err := s.host.Connect(t); !errors.Is(err, nats.ErrAuthorization) {
		t.Fatalf("reconnect after offboarding: %v, want an authorization violation", err)
	}
}

const scimPatch = `{"schemas":["urn:ietf:params:scim:api:messages:2.0:PatchOp"],"Operations":%s}`

// TestSCIMDeactivationKicks: Okta's PATCH, Entra's PATCH and a DELETE
// each disable the person, revoke their credential, drop their live NATS
// session within a second (a real connection, kicked on its server) and
// refuse the reconnect; the refresh token is revoked at the IdP.
func TestSCIMDeactivationKicks(t *testing.T) {
	for _, tc := range []struct {
		name, idp, user, subject, method, body, token string
	}{
		{"oktaPatch", "okta", "dana", "u1", http.MethodPatch, fmt.Sprintf(scimPatch, `[{"op":"replace","value":{"active":false}}]`), scimOkta},
		{"entraPatch", "entra", "erin", "obj-e1", http.MethodPatch, fmt.Sprintf(scimPatch, `[{"op":"Replace","path":"active","value":"False"}]`), scimEntra},
		{"delete", "okta", "dana", "u1", http.MethodDelete, "", scimOkta},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pf := newPeopleFleet(t)
			op := pf.okta
			if tc.idp == "entra" {
				op = pf.entra
			}
			id := pf.login(t, op, tc.idp, tc.user, tc.subject)
			s := pf.session(t, id)
			start := time.Now()
			if code := pf.scim(t, tc.method, tc.idp+"/Users/"+id, tc.token, tc.body); code/100 != 2 {
				t.Fatalf("SCIM %s: %d", tc.method, code)
			}
			answered := time.Since(start)
			took := s.droppedWithin(t, start, time.Second)
			t.Logf("SCIM %s answered in %v; last session dropped %v after the request was sent", tc.name, answered, took)
			pf.wantOffboarded(t, id, s)
			if n := op.Revocations(); n != 1 {
				t.Fatalf("%d revocations at the IdP, want the refresh token's", n)
			}
		})
	}
}

// TestSCIMGroupRemovalKicks: a group removed from the person (Okta's
// filtered members remove) shrinks their roles, so their session is
// kicked; the credential stays active and reconnects. Then an operator
// disables the person (tpmauthnctl person disable) and enables them: the
// credential stays revoked. A token for the other IdP touches nothing.
func TestSCIMGroupRemovalKicks(t *testing.T) {
	pf := newPeopleFleet(t)
	id := pf.login(t, pf.okta, "okta", "dana", "u1")
	s := pf.session(t, id)
	deactivate := fmt.Sprintf(scimPatch, `[{"op":"replace","value":{"active":false}}]`)
	if code := pf.scim(t, http.MethodPatch, "okta/Users/"+id, scimEntra, deactivate); code != http.StatusUnauthorized {
		t.Fatalf("entra's token at okta: %d, want 401", code)
	}
	if code := pf.scim(t, http.MethodPatch, "entra/Users/"+id, scimEntra, deactivate); code != http.StatusNotFound {
		t.Fatalf("okta's person through entra: %d, want 404", code)
	}
	if s.closed.Load() != nil || !pf.person(t, id).Disabled.IsZero() {
		t.Fatal("a refused request changed something")
	}
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, pf.Verifier.HTTPURL()+"/scim/v2/okta/Groups",
		strings.NewReader(`{"schemas":["urn:ietf:params:scim:schemas:core:2.0:Group"],"displayName":"ops","members":[{"value":"`+id+`"}]}`))
	req.Header.Set("Authorization", "Bearer "+scimOkta)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var g struct{ ID string }
	_ = json.NewDecoder(resp.Body).Decode(&g)
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated || g.ID == "" {
		t.Fatalf("create group: %s", resp.Status)
	}
	start := time.Now()
	if code := pf.scim(t, http.MethodPatch, "okta/Groups/"+g.ID, scimOkta,
		fmt.Sprintf(scimPatch, `[{"op":"remove","path":"members[value eq \"`+id+`\"]"}]`)); code != http.StatusOK {
		t.Fatalf("remove member: %d", code)
	}
	took := s.droppedWithin(t, start, time.Second)
	t.Logf("group removal: session dropped %v after the request", took)
	if p := pf.person(t, id); !slices.Equal(p.Groups, []string{"developers"}) || !p.Disabled.IsZero() {
		t.Fatalf("after the removal: groups %v, disabled %v", p.Groups, p.Disabled)
	}
	s.connect(t) // the same credential, the smaller set

	var res offboard.Result
	start = time.Now()
	pf.MustAdmin(t, "person.disable", api.IDRequest{ID: id, Reason: "left"}, &res)
	s.droppedWithin(t, start, time.Second)
	if res.Person == nil || len(res.Revoked) != 1 || res.Person.RefreshToken != nil {
		t.Fatalf("person.disable: %+v", res)
	}
	pf.wantOffboarded(t, id, s)
	var p record.Person
	pf.MustAdmin(t, "person.enable", api.IDRequest{ID: id}, &p)
	if !p.Disabled.IsZero() || pf.credential(t, s.cred).Status != api.CredentialRevoked {
		t.Fatalf("after enable: disabled %v, credential %s", p.Disabled, pf.credential(t, s.cred).Status)
	}
	var ps []record.Person
	pf.MustAdmin(t, "person.list", nil, &ps)
	if len(ps) != 1 || ps[0].ID != id {
		t.Fatalf("person.list: %+v", ps)
	}
	evs := pf.AuditEvents(t)
	if !slices.ContainsFunc(evs, func(e audit.Event) bool { return e.Kind == "person.offboard" && e.Actor == offboard.SourceOperator }) {
		t.Fatal("no person.offboard event naming the operator")
	}
}

// TestRecheck: the periodic re-check spends the refresh token. New groups
// with fewer roles kick the session; an unreachable IdP changes nothing
// (tried again later); a refused refresh (the user disabled at the IdP)
// offboards the person.
func TestRecheck(t *testing.T) {
	pf := newPeopleFleet(t)
	id := pf.login(t, pf.okta, "okta", "dana", "u1")
	s := pf.session(t, id)
	recheck := func() {
		pf.clock.Advance(11 * time.Minute) // past the default recheck_interval
		pf.Verifier.RecheckPeople(t.Context())
	}

	pf.okta.SetGroups("u1", "developers")
	start := time.Now()
	recheck()
	s.droppedWithin(t, start, 2*time.Second)
	if p := pf.person(t, id); !slices.Equal(p.Groups, []string{"developers"}) || !p.Disabled.IsZero() {
		t.Fatalf("after the regroup: groups %v, disabled %v", p.Groups, p.Disabled)
	}
	s.connect(t)

	pf.okta.SetDown(true)
	recheck()
	if p := pf.person(t, id); !p.Disabled.IsZero() || len(p.RefreshToken) == 0 {
		t.Fatal("an unreachable IdP offboarded the person")
	}
	if s.closed.Load() != nil || pf.credential(t, s.cred).Status != api.CredentialActive {
		t.Fatal("an unreachable IdP cut the session")
	}

	pf.okta.SetDown(false)
	pf.okta.Disable("u1")
	start = time.Now()
	recheck()
	took := s.droppedWithin(t, start, 2*time.Second)
	t.Logf("refused refresh: session dropped %v after the re-check began", took)
	pf.wantOffboarded(t, id, s)
	if p := pf.person(t, id); !strings.Contains(p.DisabledReason, "refresh failed") {
		t.Fatalf("disabled for %q, want refresh failed", p.DisabledReason)
	}
}
