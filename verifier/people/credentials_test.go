package people

import (
	"errors"
	"slices"
	"testing"

	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/verifier/record"
	"github.com/tpmauthn/tpmauthn/verifier/store"
)

// TestLinkCredential: a host's credential replaces the person's earlier one
// on that host; browser credentials (no host) replace nothing; a revoked
// one leaves the list; a disabled person is refused.
func TestLinkCredential(t *testing.T) {
	f := newFixture(t)
	ctx := t.Context()
	p, err := f.svc.Login(ctx, Identity{IdP: "okta", Issuer: oktaIssuer, SubjectClaim: "sub", Subject: "00u9", Groups: []string{"developers"}}, record.FlowBrowser, "")
	if err != nil {
		t.Fatal(err)
	}
	link := func(c *record.Credential) []string {
		t.Helper()
		c.V, c.Person, c.Status = record.Version, p.ID, api.CredentialActive
		if err := store.Create(ctx, f.env.Store.Credentials, c.ID, c); err != nil {
			t.Fatal(err)
		}
		replaced, err := f.svc.LinkCredential(ctx, p, c)
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
	if _, err := f.svc.LinkCredential(ctx, p, &record.Credential{ID: "pk3"}); !errors.Is(err, api.ErrLoginInvalid) {
		t.Fatalf("link for a disabled person: %v", err)
	}
}
