package restore

import (
	"slices"
	"testing"

	"github.com/tpmauthn/tpmauthn/verifier/backup"
	"github.com/tpmauthn/tpmauthn/verifier/store"
)

// TestBucketsAgree: a backup holds every durable bucket of the store, and
// only those (the open enrollments and challenges live minutes).
func TestBucketsAgree(t *testing.T) {
	durable := []string{store.BucketHosts, store.BucketCredentials, store.BucketTokens, store.BucketEKs, store.BucketEKAllow, store.BucketWorkloads, store.BucketPeople}
	if !slices.Equal(backup.Buckets, durable) {
		t.Fatalf("backup.Buckets = %v, want the store's durable buckets %v", backup.Buckets, durable)
	}
}
