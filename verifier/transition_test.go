package verifier

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/audit"
	"github.com/tpmauthn/tpmauthn/verifier/record"
)

// The three state-transition bugs of 7faeb90, each through the code path
// that had it.

// putCredential stores a credential record with the given status.
func putCredential(t *testing.T, v *Verifier, id string, status api.CredentialStatus) {
	t.Helper()
	now := time.Now().UTC()
	c := &record.Credential{V: record.Version, ID: id, Host: "h-test", Workload: "w", Status: status, Created: now, Updated: now}
	if _, err := v.st.creds.Put(t.Context(), id, mustJSON(t, c)); err != nil {
		t.Fatal(err)
	}
}

func credentialStatus(t *testing.T, v *Verifier, id string) api.CredentialStatus {
	t.Helper()
	c, _, err := get[record.Credential](t.Context(), v.st.creds, id)
	if err != nil {
		t.Fatal(err)
	}
	return c.Status
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// A tamper signal on a credential revoked meanwhile must not turn the
// revocation into a quarantine, which an operator could then release.
func TestQuarantineKeepsARevocation(t *testing.T) {
	v := startLocal(t)
	putCredential(t, v, "cred-revoked", api.CredentialRevoked)
	ev := audit.Deny("connect")
	v.quarantine(t.Context(), "cred-revoked", &ev, fmt.Errorf("%w: counter 3 equals the last accepted", ErrReplay))
	if got := credentialStatus(t, v, "cred-revoked"); got != api.CredentialRevoked {
		t.Fatalf("after a tamper signal the revoked credential is %s", got)
	}
	body := mustJSON(t, api.IDRequest{ID: "cred-revoked", Reason: "looks fine"})
	if _, err := v.adminCredentialRelease(t.Context(), body); err == nil {
		t.Fatal("an operator released a revoked credential")
	}
	if got := credentialStatus(t, v, "cred-revoked"); got != api.CredentialRevoked {
		t.Fatalf("after a release attempt the revoked credential is %s", got)
	}
}

// A release racing a revocation: whichever lands first, the credential
// ends revoked (the release's check and change are one compare-and-set).
func TestReleaseRacingARevocation(t *testing.T) {
	v := startLocal(t)
	for i := range 40 {
		id := fmt.Sprintf("cred-%d", i)
		putCredential(t, v, id, api.CredentialQuarantined)
		body := mustJSON(t, api.IDRequest{ID: id})
		var wg sync.WaitGroup
		var revokeErr error
		wg.Go(func() { _, _ = v.adminCredentialRelease(context.Background(), body) })
		wg.Go(func() { _, revokeErr = v.adminCredentialRevoke(context.Background(), body) })
		wg.Wait()
		if revokeErr != nil {
			t.Fatalf("%s: revoke: %v", id, revokeErr)
		}
		if got := credentialStatus(t, v, id); got != api.CredentialRevoked {
			t.Fatalf("%s: revoked and released at once, it ends %s: the release undid the revocation", id, got)
		}
	}
}

// A replaced credential whose retirement cannot be written fails the
// registration, rather than staying valid for good behind a success.
func TestRetireFailureIsReported(t *testing.T) {
	v := startLocal(t)
	putCredential(t, v, "cred-old", api.CredentialActive)
	stream, err := v.st.js.Stream(t.Context(), "KV_"+bucketCreds)
	if err != nil {
		t.Fatal(err)
	}
	info, err := stream.Info(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	cfg := info.Config
	cfg.Sealed = true // refuses every write from now on
	if _, err := v.st.js.UpdateStream(t.Context(), cfg); err != nil {
		t.Fatal(err)
	}
	if _, err := v.retire(t.Context(), "cred-old", "cred-new"); err == nil {
		t.Fatal("retire reported success although the record could not be written")
	}
	c, _, err := get[record.Credential](t.Context(), v.st.creds, "cred-old")
	if err != nil {
		t.Fatal(err)
	}
	if !c.Retires.IsZero() {
		t.Fatalf("retires %v: the write was refused, the record cannot say so", c.Retires)
	}
	var apiErr *jetstream.APIError
	_, err = v.retire(t.Context(), "cred-old", "cred-new")
	if !errors.As(err, &apiErr) && !errors.Is(err, ErrConflict) {
		t.Logf("retire error: %v", err) // the error wraps what JetStream said
	}
}
