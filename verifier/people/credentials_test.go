package people

import (
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/verifier/record"
	"github.com/tpmauthn/tpmauthn/verifier/store"
)

// TestAddCredential: a host's credential replaces the person's earlier one
// on that host; browser credentials (no host) replace nothing; a revoked
// one leaves the list; a disabled person is refused and the credential not
// kept.
func TestAddCredential(t *testing.T) {
	f := newFixture(t)
	ctx := t.Context()
	p, err := f.svc.Login(ctx, Identity{IdP: "okta", Issuer: oktaIssuer, SubjectClaim: "sub", Subject: "00u9", Groups: []string{"developers"}}, record.FlowBrowser, "")
	if err != nil {
		t.Fatal(err)
	}
	link := func(c *record.Credential) []string {
		t.Helper()
		c.V, c.Person, c.Status = record.Version, p.ID, api.CredentialActive
		replaced, err := f.svc.AddCredential(ctx, c)
		if err != nil {
			t.Fatal(err)
		}
		if p, err = f.svc.Person(ctx, p.ID); err != nil {
			t.Fatal(err)
		}
		return replaced
	}
	if r := link(&record.Credential{ID: "tpm1", Host: "h1"}); len(r) != 0 {
		t.Fatalf("first credential replaced %v", r)
	}
	if r := link(&record.Credential{ID: "pk1", Kind: record.KindPasskey}); len(r) != 0 {
		t.Fatalf("a passkey replaced %v", r)
	}
	if r := link(&record.Credential{ID: "pk2", Kind: record.KindPasskey}); len(r) != 0 {
		t.Fatalf("a second passkey replaced %v", r)
	}
	if r := link(&record.Credential{ID: "tpm2", Host: "h1"}); !slices.Equal(r, []string{"tpm1"}) {
		t.Fatalf("the host's second credential replaced %v, want tpm1", r)
	}
	if _, _, err := store.Mutate(ctx, f.env.Store.Credentials, "pk1", func(c *record.Credential) error {
		c.Status = api.CredentialRevoked
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	link(&record.Credential{ID: "sk1", Kind: record.KindSessionKey})
	if want := []string{"tpm1", "pk2", "tpm2", "sk1"}; !slices.Equal(p.Credentials, want) {
		t.Fatalf("credentials %v, want %v (revoked pk1 dropped)", p.Credentials, want)
	}
	if err := f.svc.Disable(ctx, p.ID, "left", "test"); err != nil {
		t.Fatal(err)
	}
	if _, err := f.svc.AddCredential(ctx, &record.Credential{V: record.Version, ID: "pk3", Person: p.ID, Kind: record.KindPasskey}); !errors.Is(err, ErrDisabled) {
		t.Fatalf("a credential for a disabled person: %v", err)
	}
	if _, _, err := store.Get[record.Credential](ctx, f.env.Store.Credentials, "pk3"); !errors.Is(err, api.ErrNotFound) {
		t.Fatalf("the refused credential is kept: %v", err)
	}
}

// A retired (or expired) credential stays on the person's list while a
// session it was granted may still be live: offboarding and regroups find
// sessions through the list (found by review). Once its sessions are
// over, it goes.
func TestRetiredCredentialKeptWhileSessionsLive(t *testing.T) {
	f := newFixture(t)
	ctx := t.Context()
	p, err := f.svc.Login(ctx, Identity{IdP: "okta", Issuer: oktaIssuer, SubjectClaim: "sub", Subject: "00u9", Groups: []string{"developers"}}, record.FlowBrowser, "")
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	add := func(id string) {
		t.Helper()
		if _, err := f.svc.AddCredential(ctx, &record.Credential{V: record.Version, ID: id, Person: p.ID, Status: api.CredentialActive, Kind: record.KindPasskey}); err != nil {
			t.Fatal(err)
		}
	}
	add("old")
	retire := func(sessionEnds time.Time) {
		t.Helper()
		if _, _, err := store.Mutate(ctx, f.env.Store.Credentials, "old", func(c *record.Credential) error {
			c.Retires = now.Add(-time.Minute)
			c.Sessions = []record.SessionRef{{Server: "S", Client: 1, Expires: sessionEnds}}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	listed := func() []string {
		q, err := f.svc.Person(ctx, p.ID)
		if err != nil {
			t.Fatal(err)
		}
		return q.Credentials
	}
	retire(now.Add(5 * time.Minute)) // a session granted before it retired
	add("new1")
	if got := listed(); !slices.Contains(got, "old") {
		t.Fatalf("credentials %v: the retired one dropped with a live session", got)
	}
	retire(now.Add(-time.Second)) // its last session is over
	add("new2")
	if got := listed(); slices.Contains(got, "old") {
		t.Fatalf("credentials %v: the retired one kept with no live session", got)
	}
}
