package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/audit"
	"github.com/tpmauthn/tpmauthn/verifier/internal/testenv"
	"github.com/tpmauthn/tpmauthn/verifier/record"
	"github.com/tpmauthn/tpmauthn/verifier/store"
)

// kicks counts what would be kicked (the kicks themselves are e2e's).
type kicks struct {
	mu    sync.Mutex
	ids   []string
	users []string
}

func (k *kicks) KickUser(user string) (int, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.users = append(k.users, user)
	return 0, nil
}

func (k *kicks) KickAll(_ context.Context, c *record.Credential) (int, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.ids = append(k.ids, c.ID)
	return 0, nil
}

func newService(t *testing.T) (*testenv.Env, *Service, *kicks) {
	t.Helper()
	e := testenv.New(t)
	k := &kicks{}
	return e, New(Config{Fleet: e.Fleet, Sessions: k, Trail: e.Trail}), k
}

func body(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// An operator cannot release a revoked credential: revoked is final.
func TestReleaseRefusedWhenRevoked(t *testing.T) {
	e, s, _ := newService(t)
	e.PutCredential(t, "cred-revoked", api.CredentialRevoked)
	if _, err := s.credentialRelease(t.Context(), body(t, api.IDRequest{ID: "cred-revoked", Reason: "looks fine"})); err == nil {
		t.Fatal("an operator released a revoked credential")
	}
	if got := e.Credential(t, "cred-revoked").Status; got != api.CredentialRevoked {
		t.Fatalf("after a release attempt the revoked credential is %s", got)
	}
}

// A release racing a revocation: whichever lands first, the credential
// ends revoked. On 7faeb90 the release checked "quarantined" and set
// "active" in two writes, and undid the revocation in between (this test
// fails on its first iteration with that logic).
func TestReleaseRacingARevocation(t *testing.T) {
	e, s, k := newService(t)
	for i := range 40 {
		id := fmt.Sprintf("cred-%d", i)
		e.PutCredential(t, id, api.CredentialQuarantined)
		req := body(t, api.IDRequest{ID: id})
		var wg sync.WaitGroup
		var revokeErr error
		wg.Go(func() { _, _ = s.credentialRelease(context.Background(), req) })
		wg.Go(func() { _, revokeErr = s.credentialRevoke(context.Background(), req) })
		wg.Wait()
		if revokeErr != nil {
			t.Fatalf("%s: revoke: %v", id, revokeErr)
		}
		if got := e.Credential(t, id).Status; got != api.CredentialRevoked {
			t.Fatalf("%s: revoked and released at once, it ends %s: the release undid the revocation", id, got)
		}
	}
	if len(k.ids) != 40 {
		t.Fatalf("%d kicks for 40 revocations", len(k.ids))
	}
}

// An operator action returns only once its event is in the stream, even
// behind a long queue of connect events; and creating a join token is
// audited.
func TestOperatorActionAuditedBeforeReply(t *testing.T) {
	e, s, _ := newService(t)
	for i := range 3000 {
		e.Trail.Record(audit.Event{Kind: "connect", Result: "allow", Workload: fmt.Sprintf("w%d", i)})
	}
	if _, err := s.tokenCreate(t.Context(), body(t, api.TokenCreateRequest{TTL: time.Hour, Roles: []string{"demo"}})); err != nil {
		t.Fatal(err)
	}
	if n := e.Audit.Backlog(); n != 0 {
		t.Fatalf("%d events still queued when the operator's command returned", n)
	}
	last, err := e.LastEvent(t)
	if err != nil {
		t.Fatal(err)
	}
	if last.Kind != "token.create" || last.Actor != "operator" || !slices.Equal(last.Roles, []string{"demo"}) {
		t.Fatalf("last event in the stream: %+v, want the token.create", last)
	}
}

// Revoking a host revokes and kicks each of its credentials, and only its
// own; revoking it again changes nothing; a revoked host cannot be approved.
func TestRevokeHost(t *testing.T) {
	e, s, k := newService(t)
	ctx := t.Context()
	now := time.Now().UTC()
	h := &record.Host{V: record.Version, ID: "h-test", Status: api.HostActive, Created: now, Updated: now}
	if _, err := e.Store.Hosts.Put(ctx, h.ID, body(t, h)); err != nil {
		t.Fatal(err)
	}
	e.PutCredential(t, "c1", api.CredentialActive)
	e.PutCredential(t, "c2", api.CredentialQuarantined)
	other := &record.Credential{V: record.Version, ID: "c3", Host: "h-other", Status: api.CredentialActive}
	if _, err := e.Store.Credentials.Put(ctx, other.ID, body(t, other)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.hostRevoke(ctx, body(t, api.IDRequest{ID: "h-test", Reason: "stolen"})); err != nil {
		t.Fatal(err)
	}
	for id, want := range map[string]api.CredentialStatus{"c1": api.CredentialRevoked, "c2": api.CredentialRevoked, "c3": api.CredentialActive} {
		if got := e.Credential(t, id).Status; got != want {
			t.Errorf("%s is %s, want %s", id, got, want)
		}
	}
	slices.Sort(k.ids)
	if !slices.Equal(k.ids, []string{"c1", "c2"}) {
		t.Fatalf("kicked %v, want c1 and c2", k.ids)
	}
	if _, err := s.hostRevoke(ctx, body(t, api.IDRequest{ID: "h-test", Reason: "again"})); err != nil {
		t.Fatalf("revoking a revoked host: %v", err)
	}
	if _, err := s.hostApprove(ctx, body(t, api.IDRequest{ID: "h-test"})); err == nil {
		t.Fatal("a revoked host was approved")
	}
}

// M7: revoking a credential right after a rotation left the key it
// replaced valid for its grace period, and its live connection up. The
// revocation covers the whole lineage now, and kicks each.
func TestRevokeCoversTheLineage(t *testing.T) {
	e, s, k := newService(t)
	ctx := t.Context()
	put := func(c *record.Credential) {
		c.V, c.Host, c.Workload, c.Status = record.Version, "h-test", "w", api.CredentialActive
		if _, err := e.Store.Credentials.Put(ctx, c.ID, body(t, c)); err != nil {
			t.Fatal(err)
		}
	}
	put(&record.Credential{ID: "first", Retires: time.Now().Add(time.Minute), ReplacedBy: "second"}) // in its grace period
	put(&record.Credential{ID: "second", Lineage: "first"})
	put(&record.Credential{ID: "other"}) // another lineage of the host
	if _, err := s.credentialRevoke(ctx, body(t, api.IDRequest{ID: "second", Reason: "key exposure"})); err != nil {
		t.Fatal(err)
	}
	for id, want := range map[string]api.CredentialStatus{"first": api.CredentialRevoked, "second": api.CredentialRevoked, "other": api.CredentialActive} {
		if got := e.Credential(t, id).Status; got != want {
			t.Errorf("%s is %s, want %s", id, got, want)
		}
	}
	slices.Sort(k.ids)
	if !slices.Equal(k.ids, []string{"first", "second"}) {
		t.Fatalf("kicked %v, want the lineage's two credentials", k.ids)
	}
}

// M2: a join token could not be revoked, nor an EK taken off the
// allow-list. A revoked token is refused from then on; a used one cannot be
// revoked (its host can).
func TestRevokeTokenAndDisallowEK(t *testing.T) {
	e, s, _ := newService(t)
	ctx := t.Context()
	out, err := s.tokenCreate(ctx, body(t, api.TokenCreateRequest{TTL: time.Hour, Roles: []string{"demo"}}))
	if err != nil {
		t.Fatal(err)
	}
	created := out.(*api.TokenCreateResponse)
	got, err := s.tokenRevoke(ctx, body(t, api.IDRequest{ID: created.ID, Reason: "leaked"}))
	if err != nil {
		t.Fatal(err)
	}
	if st := got.(*record.Token).State(time.Now()); st != "revoked" {
		t.Fatalf("revoked token is %s", st)
	}
	tok, _, err := store.Get[record.Token](ctx, e.Store.Tokens, record.TokenHash(created.Token))
	if err != nil || tok.State(time.Now()) != "revoked" {
		t.Fatalf("stored token: %+v, %v", tok, err)
	}
	used := &record.Token{V: record.Version, ID: "usedtoken123", Hash: "usedhash", UsedBy: "h-1", Expires: time.Now().Add(time.Hour)}
	if _, err := e.Store.Tokens.Put(ctx, used.Hash, body(t, used)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.tokenRevoke(ctx, body(t, api.IDRequest{ID: used.ID})); !errors.Is(err, api.ErrBadRequest) {
		t.Fatalf("revoking a used token: %v, want bad_request", err)
	}

	hash := strings.Repeat("ab", 32)
	if _, err := s.ekAllow(ctx, body(t, api.EKAllowRequest{EKHash: hash, Roles: []string{"edge"}})); err != nil {
		t.Fatal(err)
	}
	if _, err := s.ekDisallow(ctx, body(t, api.EKAllowRequest{EKHash: hash})); err != nil {
		t.Fatal(err)
	}
	if _, _, err := store.Get[record.EKAllow](ctx, e.Store.EKAllow, hash); !errors.Is(err, api.ErrNotFound) {
		t.Fatalf("disallowed EK still listed: %v", err)
	}
	if _, err := s.ekDisallow(ctx, body(t, api.EKAllowRequest{EKHash: hash})); !errors.Is(err, api.ErrNotFound) {
		t.Fatalf("disallowing an EK not on the list: %v, want not_found", err)
	}
}

// A reissue marks the workload index of a revoked credential, which stays
// revoked; it is refused for a credential that is not revoked or no longer
// its workload's, for an unknown name and a host that is not active, and
// every attempt is audited.
func TestReissue(t *testing.T) {
	e, s, _ := newService(t)
	ctx := t.Context()
	now := time.Now().UTC()
	for _, h := range []*record.Host{
		{V: record.Version, ID: "h-test", Status: api.HostActive, Created: now, Updated: now},
		{V: record.Version, ID: "h-gone", Status: api.HostRevoked, Created: now, Updated: now},
	} {
		if _, err := e.Store.Hosts.Put(ctx, h.ID, body(t, h)); err != nil {
			t.Fatal(err)
		}
	}
	e.PutCredential(t, "c-active", api.CredentialActive)
	e.PutCredential(t, "c-quarantined", api.CredentialQuarantined)
	e.PutCredential(t, "c-revoked", api.CredentialRevoked)
	e.PutCredential(t, "c-replaced", api.CredentialRevoked)
	gone := &record.Credential{V: record.Version, ID: "c-gone", Host: "h-gone", Workload: "w", Status: api.CredentialRevoked}
	if _, err := e.Store.Credentials.Put(ctx, gone.ID, body(t, gone)); err != nil {
		t.Fatal(err)
	}
	for key, cred := range map[string]string{"h-test.w": "c-revoked", "h-gone.w": "c-gone"} {
		if _, err := e.Store.Workloads.Put(ctx, key, body(t, record.WorkloadIndex{V: record.Version, Credential: cred})); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		name, id string
		want     error // nil: allowed
	}{
		{"active", "c-active", api.ErrBadRequest},
		{"quarantined", "c-quarantined", api.ErrBadRequest},
		{"notCurrent", "c-replaced", api.ErrBadRequest},
		{"unknown", "c-none", api.ErrNotFound},
		{"unknownWorkload", "h-test/none", api.ErrNotFound},
		{"malformed", "h-test/w.>", api.ErrBadRequest},
		{"hostRevoked", "c-gone", api.ErrHostNotActive},
		{"byCredential", "c-revoked", nil},
		{"byWorkload", "h-test/w", nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := s.credentialReissue(ctx, body(t, api.IDRequest{ID: tc.id, Reason: "test"}))
			if (tc.want == nil && err != nil) || (tc.want != nil && !errors.Is(err, tc.want)) {
				t.Fatalf("reissue %s = %v, want %v", tc.id, err, tc.want)
			}
			last, lerr := e.LastEvent(t)
			if lerr != nil || last.Kind != "reissue" || last.Actor != "operator" || (last.Result == "ok") != (tc.want == nil) {
				t.Fatalf("audit event %+v (%v), want a reissue with result ok=%v", last, lerr, tc.want == nil)
			}
		})
	}
	idx, _, err := store.Get[record.WorkloadIndex](ctx, e.Store.Workloads, "h-test.w")
	if err != nil || idx.Reissued.IsZero() || !idx.ReissueAllowed(e.Credential(t, "c-revoked")) {
		t.Fatalf("workload index after the reissue: %+v, %v", idx, err)
	}
	if got := e.Credential(t, "c-revoked").Status; got != api.CredentialRevoked {
		t.Fatalf("the reissued credential is %s, want revoked", got)
	}
}
