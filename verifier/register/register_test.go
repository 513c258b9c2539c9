package register

import (
	"testing"
	"time"

	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/verifier/internal/testenv"
	"github.com/tpmauthn/tpmauthn/verifier/store"
)

// A replaced credential whose retirement cannot be written fails the
// registration, rather than staying valid for good behind a success (on
// 7faeb90 retire logged the failure and reported success).
func TestRetireFailureIsReported(t *testing.T) {
	e := testenv.New(t)
	s := New(Config{Fleet: e.Fleet, RotationGrace: 10 * time.Minute})
	e.PutCredential(t, "cred-old", api.CredentialActive)
	retires, err := s.retire(t.Context(), "cred-old", "cred-new")
	if err != nil || retires.IsZero() || e.Credential(t, "cred-old").ReplacedBy != "cred-new" {
		t.Fatalf("retire on a healthy store: %v, %v", retires, err)
	}

	e.PutCredential(t, "cred-old2", api.CredentialActive)
	stream, err := e.JS.Stream(t.Context(), "KV_"+store.BucketCredentials)
	if err != nil {
		t.Fatal(err)
	}
	info, err := stream.Info(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	cfg := info.Config
	cfg.Sealed = true // refuses every write from now on
	if _, err := e.JS.UpdateStream(t.Context(), cfg); err != nil {
		t.Fatal(err)
	}
	if _, err := s.retire(t.Context(), "cred-old2", "cred-new2"); err == nil {
		t.Fatal("retire reported success although the record could not be written")
	}
	if c := e.Credential(t, "cred-old2"); !c.Retires.IsZero() {
		t.Fatalf("retires %v: the write was refused, the record cannot say so", c.Retires)
	}
}
