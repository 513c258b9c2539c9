package people

import (
	"errors"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tpmauthn/tpmauthn/audit"
	"github.com/tpmauthn/tpmauthn/verifier/internal/testenv"
	"github.com/tpmauthn/tpmauthn/verifier/policy"
	"github.com/tpmauthn/tpmauthn/verifier/record"
)

const testPolicy = `
roles:
  dev: {publish: {allow: ["dev.{{person}}.>"]}}
  admin: {publish: {allow: ["admin.>"]}}
people:
  login_ttl: 8h
  idps:
    - {name: okta, issuer: "https://okta.example.com", client_id: c, client_secret_env: S}
    - {name: entra, issuer: "https://entra.example.com", client_id: c, client_secret_env: S}
  bindings:
    - {idp: okta, groups: [developers], roles: [dev]}
    - {idp: entra, groups: [developers], roles: [dev]}
    - {idp: okta, groups: [ops], roles: [admin], require: {assurance: hardware}}
`

const oktaIssuer = "https://okta.example.com"

type fixture struct {
	env *testenv.Env
	svc *Service
	now atomic.Pointer[time.Time]
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	pol, err := policy.Parse([]byte(testPolicy))
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{env: testenv.New(t)}
	start := time.Now()
	f.now.Store(&start)
	f.svc = New(Config{Store: f.env.Store, Policy: func() *policy.Policy { return pol }, Trail: f.env.Trail,
		Now: func() time.Time { return *f.now.Load() }})
	return f
}

func (f *fixture) advance(d time.Duration) {
	t := f.now.Load().Add(d)
	f.now.Store(&t)
}

func TestLoginCreatesAndUpdates(t *testing.T) {
	f := newFixture(t)
	ctx := t.Context()
	id := Identity{IdP: "okta", Issuer: oktaIssuer, SubjectClaim: "sub", Subject: "00u1", Name: "Ada", Email: "ada@example.com", Groups: []string{"developers"}}
	p, err := f.svc.Login(ctx, id, record.FlowBrowser, "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	if p.ID != record.PersonID("okta", "00u1") || p.Email != "ada@example.com" {
		t.Fatalf("person %+v", p)
	}
	id.Groups, id.Email = []string{"developers", "ops"}, "ada@new.example.com"
	f.advance(time.Hour)
	p2, err := f.svc.Login(ctx, id, record.FlowBrowser, "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	if p2.ID != p.ID || !p2.Created.Equal(p.Created) || !slices.Equal(p2.Groups, id.Groups) || p2.Email != id.Email || !p2.LastLogin.After(p.LastLogin) {
		t.Fatalf("second login: %+v", p2)
	}
	ev, err := f.env.LastEvent(t)
	if err != nil || ev.Kind != "person.login" || ev.Result != audit.OK || ev.Person != p.ID || !strings.Contains(ev.Reason, "ada@new.example.com") {
		t.Fatalf("audit %+v %v", ev, err)
	}
}

// The same email at another IdP, or under another subject, is another
// person: an email is never an identity.
func TestEmailIsNotIdentity(t *testing.T) {
	f := newFixture(t)
	ids := []Identity{
		{IdP: "okta", Issuer: oktaIssuer, SubjectClaim: "sub", Subject: "a", Email: "same@example.com"},
		{IdP: "entra", Issuer: "https://entra.example.com", SubjectClaim: "sub", Subject: "a", Email: "same@example.com"},
		{IdP: "okta", Issuer: oktaIssuer, SubjectClaim: "sub", Subject: "b", Email: "same@example.com"},
	}
	seen := map[string]bool{}
	for _, id := range ids {
		p, err := f.svc.Login(t.Context(), id, record.FlowBrowser, "")
		if err != nil {
			t.Fatal(err)
		}
		if seen[p.ID] {
			t.Fatalf("%+v shares person %s", id, p.ID)
		}
		seen[p.ID] = true
	}
}

func TestDisabledPersonRefused(t *testing.T) {
	f := newFixture(t)
	ctx := t.Context()
	id := Identity{IdP: "okta", Issuer: oktaIssuer, SubjectClaim: "sub", Subject: "gone"}
	p, err := f.svc.Login(ctx, id, record.FlowBrowser, "")
	if err != nil {
		t.Fatal(err)
	}
	res, err := f.svc.Grant(ctx, p, record.FlowLoopback, "", keyHere)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.svc.Disable(ctx, p.ID, "left the company", "test"); err != nil {
		t.Fatal(err)
	}
	if _, err := f.svc.Login(ctx, id, record.FlowBrowser, ""); !errors.Is(err, ErrDisabled) {
		t.Fatalf("login of a disabled person: %v, want ErrDisabled", err)
	}
	ev, _ := f.env.LastEvent(t)
	if ev.Kind != "person.login" || ev.Result != audit.DenyText || ev.Person != p.ID {
		t.Fatalf("refusal audited as %+v", ev)
	}
	if _, _, err := f.svc.Redeem(ctx, res.AccessToken, keyHere); !errors.Is(err, ErrDisabled) {
		t.Fatalf("redeem of a disabled person's grant: %v, want ErrDisabled", err)
	}
}

func TestGrantRedeemOnce(t *testing.T) {
	f := newFixture(t)
	ctx := t.Context()
	p, err := f.svc.Login(ctx, Identity{IdP: "okta", Issuer: oktaIssuer, SubjectClaim: "sub", Subject: "s", Groups: []string{"developers", "ops"}}, record.FlowDevice, "")
	if err != nil {
		t.Fatal(err)
	}
	res, err := f.svc.Grant(ctx, p, record.FlowDevice, "10.0.0.1", keyHere)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(res.Roles, []string{"admin", "dev"}) || !slices.Equal(res.SoftwareRoles, []string{"dev"}) {
		t.Fatalf("roles %v software %v", res.Roles, res.SoftwareRoles)
	}
	if got := res.LoginExpires.Sub(*f.now.Load()); got < 8*time.Hour-time.Second || got > 8*time.Hour+time.Second {
		t.Fatalf("login expires in %v, want the policy's 8h", got)
	}
	g, who, err := f.svc.Redeem(ctx, res.AccessToken, keyHere)
	if err != nil || who.ID != p.ID || g.Flow != record.FlowDevice || !g.LoginExpires.Equal(res.LoginExpires) {
		t.Fatalf("redeem: %+v %+v %v", g, who, err)
	}
	if _, _, err := f.svc.Redeem(ctx, res.AccessToken, keyHere); !errors.Is(err, ErrGrantInvalid) {
		t.Fatalf("second redeem: %v, want ErrGrantInvalid", err)
	}
	if _, _, err := f.svc.Redeem(ctx, "made-up", keyHere); !errors.Is(err, ErrGrantInvalid) {
		t.Fatalf("unknown grant: %v, want ErrGrantInvalid", err)
	}
	res, err = f.svc.Grant(ctx, p, record.FlowDevice, "", keyHere)
	if err != nil {
		t.Fatal(err)
	}
	f.advance(GrantTTL + time.Second)
	if _, _, err := f.svc.Redeem(ctx, res.AccessToken, keyHere); !errors.Is(err, ErrGrantInvalid) {
		t.Fatalf("expired grant: %v, want ErrGrantInvalid", err)
	}
}

// M4b: a person is the issuer and subject claim they were created with,
// not the IdP's name: a login naming the same IdP and subject from another
// issuer, or read from another claim, is refused and changes nothing.
func TestLoginOtherIssuerRefused(t *testing.T) {
	f := newFixture(t)
	ctx := t.Context()
	ada := Identity{IdP: "okta", Issuer: oktaIssuer, SubjectClaim: "sub", Subject: "00u1", Name: "Ada"}
	if _, err := f.svc.Login(ctx, ada, record.FlowBrowser, ""); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		id   Identity
	}{
		{"otherIssuer", Identity{IdP: "okta", Issuer: "https://evil.example.com", SubjectClaim: "sub", Subject: "00u1", Name: "Mallory"}},
		{"otherClaim", Identity{IdP: "okta", Issuer: oktaIssuer, SubjectClaim: "employee_id", Subject: "00u1", Name: "Mallory"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := f.svc.Login(ctx, tc.id, record.FlowBrowser, ""); !errors.Is(err, ErrIdentity) {
				t.Fatalf("login: %v, want ErrIdentity", err)
			}
			if p, err := f.svc.Person(ctx, record.PersonID("okta", "00u1")); err != nil || p.Name != "Ada" {
				t.Fatalf("person %+v %v", p, err)
			}
		})
	}
}

// M4a: no grant for a person whose IdP is not in the policy (removed), or
// is there with another issuer.
func TestGrantNeedsThePersonsIdP(t *testing.T) {
	f := newFixture(t)
	for _, tc := range []struct {
		name string
		p    record.Person
	}{
		{"removed", record.Person{ID: record.PersonID("ghost", "s"), IdP: "ghost", Issuer: "https://ghost.example.com", SubjectClaim: "sub"}},
		{"otherIssuer", record.Person{ID: record.PersonID("okta", "s"), IdP: "okta", Issuer: "https://old.example.com", SubjectClaim: "sub"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := f.svc.Grant(t.Context(), &tc.p, record.FlowLoopback, "", keyHere); !errors.Is(err, ErrIdentity) {
				t.Fatalf("grant: %v, want ErrIdentity", err)
			}
		})
	}
}

// The re-check stores a rotated refresh token only over the one it spent:
// a newer login's token, or none after offboarding, stays (P-16a).
func TestReplaceRefreshToken(t *testing.T) {
	f := newFixture(t)
	sealer, err := NewSealer(make([]byte, 32))
	if err != nil {
		t.Fatal(err)
	}
	f.svc.cfg.Sealer = sealer
	ctx := t.Context()
	id := Identity{IdP: "okta", Issuer: oktaIssuer, SubjectClaim: "sub", Subject: "00u1", RefreshToken: "r1"}
	p, err := f.svc.Login(ctx, id, record.FlowBrowser, "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	stored := func() string {
		t.Helper()
		cur, err := f.svc.Person(ctx, p.ID)
		if err != nil {
			t.Fatal(err)
		}
		tok, err := f.svc.RefreshToken(cur)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	if err := f.svc.ReplaceRefreshToken(ctx, p.ID, "r1", "r2"); err != nil || stored() != "r2" {
		t.Fatalf("replace r1: %v, stored %q", err, stored())
	}
	if err := f.svc.ReplaceRefreshToken(ctx, p.ID, "r1", "r3"); !errors.Is(err, ErrTokenChanged) || stored() != "r2" {
		t.Fatalf("replace a token no longer stored: %v, stored %q", err, stored())
	}
	if err := f.svc.Disable(ctx, p.ID, "offboarded", "test"); err != nil {
		t.Fatal(err)
	}
	if err := f.svc.ReplaceRefreshToken(ctx, p.ID, "r2", "r3"); !errors.Is(err, ErrTokenChanged) || stored() != "r2" {
		t.Fatalf("replace for a disabled person: %v, stored %q", err, stored())
	}
	if err := f.svc.SetRefreshToken(ctx, p.ID, ""); err != nil {
		t.Fatal(err)
	}
	if err := f.svc.ReplaceRefreshToken(ctx, p.ID, "r2", "r3"); !errors.Is(err, ErrTokenChanged) || stored() != "" {
		t.Fatalf("replace after the token was dropped: %v, stored %q", err, stored())
	}
}

// TestGrantRedeemedWhereAskedFor (P-15): a login grant is redeemed only
// where it was asked for — a host's agent for one local user, or a software
// key. Presented anywhere else it is refused and spent (a grant seen in the
// wrong place has leaked), and the attempt is audited.
func TestGrantRedeemedWhereAskedFor(t *testing.T) {
	here := &record.GrantBinding{Host: "h-0011223344556677", UID: 1003}
	for _, tc := range []struct {
		name      string
		bound, at *record.GrantBinding
		ok        bool
	}{
		{"same host and user", here, &record.GrantBinding{Host: here.Host, UID: 1003}, true},
		{"software key's grant with its key", keyHere, &record.GrantBinding{Key: keyHere.Key}, true},
		{"software key's grant with another key", keyHere, &record.GrantBinding{Key: strings.Repeat("ef", 32)}, false},
		{"another local user", here, &record.GrantBinding{Host: here.Host, UID: 1004}, false},
		{"another host", here, &record.GrantBinding{Host: "h-8899aabbccddeeff", UID: 1003}, false},
		{"a host's grant as a software key", here, keyHere, false},
		{"a software key's grant at an agent", keyHere, here, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			ctx := t.Context()
			p, err := f.svc.Login(ctx, Identity{IdP: "okta", Issuer: oktaIssuer, SubjectClaim: "sub", Subject: "s", Groups: []string{"developers"}}, record.FlowLoopback, "")
			if err != nil {
				t.Fatal(err)
			}
			res, err := f.svc.Grant(ctx, p, record.FlowLoopback, "", tc.bound)
			if err != nil {
				t.Fatal(err)
			}
			_, who, err := f.svc.Redeem(ctx, res.AccessToken, tc.at)
			if tc.ok {
				if err != nil || who.ID != p.ID {
					t.Fatalf("redeemed where asked for: %v", err)
				}
				return
			}
			if !errors.Is(err, ErrGrantMisplaced) || !errors.Is(err, ErrGrantInvalid) {
				t.Fatalf("redeemed as %s, bound to %s: %v, want ErrGrantMisplaced", tc.at, tc.bound, err)
			}
			ev, err := f.env.LastEvent(t)
			if err != nil || ev.Kind != "person.grant.redeem" || ev.Result == audit.OK || ev.Person != p.ID || !strings.Contains(ev.Reason, "leaked") {
				t.Fatalf("audit of the misplaced grant: %+v %v", ev, err)
			}
			if _, _, err := f.svc.Redeem(ctx, res.AccessToken, tc.bound); !errors.Is(err, ErrGrantInvalid) {
				t.Fatalf("the grant, back where it was asked for after a misplaced try: %v, want spent", err)
			}
		})
	}
}

// TestUnboundGrantRedeemedNowhere: a grant of a login that said nowhere
// (an earlier version's) is refused at an agent and as a software key,
// spent, and audited as such, not as a leak.
func TestUnboundGrantRedeemedNowhere(t *testing.T) {
	f := newFixture(t)
	ctx := t.Context()
	p, err := f.svc.Login(ctx, Identity{IdP: "okta", Issuer: oktaIssuer, SubjectClaim: "sub", Subject: "s", Groups: []string{"developers"}}, record.FlowLoopback, "")
	if err != nil {
		t.Fatal(err)
	}
	for _, at := range []*record.GrantBinding{{Host: "h-0011223344556677", UID: 1003}, keyHere} {
		res, err := f.svc.Grant(ctx, p, record.FlowLoopback, "", nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := f.svc.Redeem(ctx, res.AccessToken, at); !errors.Is(err, ErrGrantUnbound) || !errors.Is(err, ErrGrantInvalid) {
			t.Fatalf("an unbound grant at %s: %v, want ErrGrantUnbound", at, err)
		}
		ev, err := f.env.LastEvent(t)
		if err != nil || ev.Kind != "person.grant.redeem" || ev.Result == audit.OK || !strings.Contains(ev.Reason, "bound nowhere") {
			t.Fatalf("audit of the unbound grant: %+v %v", ev, err)
		}
		if _, _, err := f.svc.Redeem(ctx, res.AccessToken, at); !errors.Is(err, ErrGrantInvalid) {
			t.Fatalf("the unbound grant again: %v, want spent", err)
		}
	}
}

// keyHere binds the tests' grants to a software key.
var keyHere = &record.GrantBinding{Key: strings.Repeat("cd", 32)}
