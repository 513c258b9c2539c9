package verifier

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/tpmauthn/tpmauthn/verifier/keys"
	"github.com/tpmauthn/tpmauthn/verifier/record"
)

// Bucket names. Rarely written buckets keep five revisions a key, a short
// trail of each record's versions; the credentials bucket keeps one (see
// openStore).
const (
	bucketHosts      = "tpmauthn_hosts"
	bucketCreds      = "tpmauthn_credentials"
	bucketTokens     = "tpmauthn_tokens"
	bucketEKs        = "tpmauthn_eks"
	bucketEKAllow    = "tpmauthn_ek_allow"
	bucketEnroll     = "tpmauthn_enroll"
	bucketChallenges = "tpmauthn_challenges"
	bucketWorkloads  = "tpmauthn_workloads"
	sessionTTL       = 5 * time.Minute
)

// store is the fleet state in JetStream KV.
type store struct {
	js                                                     jetstream.JetStream
	hosts, creds, tokens, eks, ekAllow, enroll, challenges jetstream.KeyValue
	workloads                                              jetstream.KeyValue
}

func openStore(ctx context.Context, nc *nats.Conn) (*store, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	s := store{js: js}
	buckets := []struct {
		name string
		ttl  time.Duration
		dst  *jetstream.KeyValue
	}{
		{bucketHosts, 0, &s.hosts},
		{bucketCreds, 0, &s.creds},
		{bucketTokens, 0, &s.tokens},
		{bucketEKs, 0, &s.eks},
		{bucketEKAllow, 0, &s.ekAllow},
		{bucketEnroll, sessionTTL, &s.enroll},
		{bucketChallenges, sessionTTL, &s.challenges},
		{bucketWorkloads, 0, &s.workloads},
	}
	for _, b := range buckets {
		// Earlier revisions help an operator on rarely written records.
		// Credential records are rewritten on every connect (counter,
		// sessions), so theirs would be a few connects old and would hold
		// five records a credential on disk; the audit trail keeps what
		// changed. An existing bucket is updated in place (JetStream drops
		// the surplus revisions).
		history := uint8(5)
		if b.ttl > 0 || b.name == bucketCreds {
			history = 1
		}
		kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
			Bucket: b.name, History: history, TTL: b.ttl, Storage: jetstream.FileStorage,
		})
		if err != nil {
			return nil, fmt.Errorf("KV bucket %s: %w (is JetStream enabled for the %s account?)", b.name, err, keys.AccountAuth)
		}
		*b.dst = kv
	}
	return &s, nil
}

// get reads a record and its revision. A missing key is ErrNotFound.
func get[T any, P interface {
	*T
	record.Versioned
}](ctx context.Context, kv jetstream.KeyValue, key string) (P, uint64, error) {
	e, err := kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) || errors.Is(err, jetstream.ErrInvalidKey) {
		return nil, 0, ErrNotFound
	}
	if err != nil {
		return nil, 0, fmt.Errorf("%s get %s: %w", kv.Bucket(), key, err)
	}
	var v T
	p := P(&v)
	if err := json.Unmarshal(e.Value(), p); err != nil {
		return nil, 0, fmt.Errorf("%s/%s: %w", kv.Bucket(), key, err)
	}
	if p.RecordVersion() != record.Version {
		return nil, 0, fmt.Errorf("%s/%s: record version %d, this verifier reads %d", kv.Bucket(), key, p.RecordVersion(), record.Version)
	}
	return p, e.Revision(), nil
}

// create stores a new record; an existing key is ErrConflict.
func create(ctx context.Context, kv jetstream.KeyValue, key string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if _, err := kv.Create(ctx, key, b); err != nil {
		if errors.Is(err, jetstream.ErrKeyExists) {
			return ErrConflict
		}
		return fmt.Errorf("%s create %s: %w", kv.Bucket(), key, err)
	}
	return nil
}

// update replaces a record if it is still at revision rev (compare-and-set);
// otherwise ErrConflict.
func update(ctx context.Context, kv jetstream.KeyValue, key string, v any, rev uint64) error {
	_, err := updateRev(ctx, kv, key, v, rev)
	return err
}

// updateRev is update returning the record's new revision.
func updateRev(ctx context.Context, kv jetstream.KeyValue, key string, v any, rev uint64) (uint64, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return 0, err
	}
	next, err := kv.Update(ctx, key, b, rev)
	if err != nil {
		if errors.Is(err, jetstream.ErrKeyRevisionMismatch) || errors.Is(err, jetstream.ErrKeyExists) {
			return 0, ErrConflict
		}
		return 0, fmt.Errorf("%s update %s: %w", kv.Bucket(), key, err)
	}
	return next, nil
}

// mutateAttempts bounds the re-reads of one mutate: each conflict means
// another writer changed the record, so running out means heavy contention.
const mutateAttempts = 20

// mutate is the one read-modify-write of a record: it reads the record,
// applies f and writes it back with compare-and-set, and on a conflict reads
// and applies f again. An error from f leaves the record unwritten and is
// returned as it is. It returns the record as written and its revision.
func mutate[T any, P interface {
	*T
	record.Versioned
}](ctx context.Context, kv jetstream.KeyValue, key string, f func(P) error) (P, uint64, error) {
	for range mutateAttempts {
		p, rev, err := get[T, P](ctx, kv, key)
		if err != nil {
			return nil, 0, err
		}
		if err := f(p); err != nil {
			return nil, 0, err
		}
		next, err := updateRev(ctx, kv, key, p, rev)
		if errors.Is(err, ErrConflict) {
			continue
		}
		if err != nil {
			return nil, 0, err
		}
		return p, next, nil
	}
	return nil, 0, fmt.Errorf("%w: %s/%s changed concurrently %d times", ErrConflict, kv.Bucket(), key, mutateAttempts)
}

// take deletes a record if it is still at revision rev, so that exactly one
// caller consumes a single-use record (a challenge, an enrollment session).
func take(ctx context.Context, kv jetstream.KeyValue, key string, rev uint64) error {
	if err := kv.Delete(ctx, key, jetstream.LastRevision(rev)); err != nil {
		if errors.Is(err, jetstream.ErrKeyRevisionMismatch) || errors.Is(err, jetstream.ErrKeyExists) {
			return ErrConflict
		}
		return fmt.Errorf("%s delete %s: %w", kv.Bucket(), key, err)
	}
	return nil
}

// list reads every record of a bucket.
func list[T any, P interface {
	*T
	record.Versioned
}](ctx context.Context, kv jetstream.KeyValue) ([]P, error) {
	lister, err := kv.ListKeys(ctx)
	if err != nil {
		return nil, fmt.Errorf("%s list: %w", kv.Bucket(), err)
	}
	out := []P{} // JSON [] rather than null when empty
	for key := range lister.Keys() {
		v, _, err := get[T, P](ctx, kv, key)
		if errors.Is(err, ErrNotFound) {
			continue // deleted meanwhile
		}
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, nil
}
