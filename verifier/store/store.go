// Package store is the fleet's state in JetStream KV: the buckets, and the
// typed reads and writes every service uses (Get, Create, Update, Take,
// List, and Mutate, the one read-modify-write loop). Records are versioned
// JSON (verifier/record); every change is a compare-and-set on the record's
// revision, so several verifier instances share one fleet safely.
//
// A missing record is api.ErrNotFound and a lost compare-and-set
// api.ErrConflict; any other error is the store failing (a JetStream outage)
// and wraps api.ErrUnavailable, so that callers never mistake an outage for
// a domain answer such as "revoked".
package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/verifier/keys"
	"github.com/tpmauthn/tpmauthn/verifier/record"
)

// Bucket names. Rarely written buckets keep five revisions a key, a short
// trail of each record's versions; the credentials bucket keeps one (see
// openStore).
const (
	BucketHosts       = "tpmauthn_hosts"
	BucketCredentials = "tpmauthn_credentials"
	BucketTokens      = "tpmauthn_tokens"
	BucketEKs         = "tpmauthn_eks"
	BucketEKAllow     = "tpmauthn_ek_allow"
	BucketEnroll      = "tpmauthn_enroll"
	BucketChallenges  = "tpmauthn_challenges"
	BucketWorkloads   = "tpmauthn_workloads"
	BucketPeople      = "tpmauthn_people"
	BucketLogins      = "tpmauthn_logins"
	SessionTTL        = 5 * time.Minute
	// LoginTTL bounds the records of a login under way (states, one-time
	// codes, device authorizations, grants): each expires sooner by its own
	// Expires, and the bucket drops it after this.
	LoginTTL = 15 * time.Minute
)

// MaxRecordSize bounds one record (a credential with its 64 sessions is
// about 8 KB).
const MaxRecordSize = 64 << 10

// maxTTLBucketBytes bounds the open enrollments and the registration
// challenges (each about 1 KB, living SessionTTL).
const maxTTLBucketBytes = 64 << 20

// maxLoginBucketBytes bounds the logins under way (each record about
// 500 bytes, living at most LoginTTL): tens of thousands of logins at once,
// and JetStream reserves a bounded bucket's bytes on disk when it creates
// it, so no more than that.
const maxLoginBucketBytes = 16 << 20

// Store is the fleet state in JetStream KV: one bucket a kind of record.
type Store struct {
	JS jetstream.JetStream
	// Hosts by host ID; Credentials by credential ID (base64url); Tokens by
	// the hex SHA-256 of the join token; EKs (enrolled) and EKAllow (the
	// allow-list) by EK hash; Enroll (open enrollments) and Challenges
	// (registration challenges) expire after SessionTTL; Workloads maps
	// host.workload to its current credential. People by person ID;
	// Logins (logins under way, expiring after LoginTTL) by kind and the
	// hash of the secret that names them (record.SecretKey).
	Hosts, Credentials, Tokens, EKs, EKAllow, Enroll, Challenges, Workloads jetstream.KeyValue
	People, Logins                                                          jetstream.KeyValue
}

// Options are the buckets' settings that depend on the deployment.
type Options struct {
	// Replicas of every bucket (0: 1). An existing bucket with fewer is
	// scaled up in place.
	Replicas int
}

// Open creates or updates the buckets (an existing bucket keeps its data).
func Open(ctx context.Context, nc *nats.Conn, o Options) (*Store, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	s := Store{JS: js}
	buckets := []struct {
		name string
		ttl  time.Duration
		dst  *jetstream.KeyValue
	}{
		{BucketHosts, 0, &s.Hosts},
		{BucketCredentials, 0, &s.Credentials},
		{BucketTokens, 0, &s.Tokens},
		{BucketEKs, 0, &s.EKs},
		{BucketEKAllow, 0, &s.EKAllow},
		{BucketEnroll, SessionTTL, &s.Enroll},
		{BucketChallenges, SessionTTL, &s.Challenges},
		{BucketWorkloads, 0, &s.Workloads},
		{BucketPeople, 0, &s.People},
		{BucketLogins, LoginTTL, &s.Logins},
	}
	for _, b := range buckets {
		// Earlier revisions help an operator on rarely written records.
		// Credential records are rewritten on every connect (counter,
		// sessions), so theirs would be a few connects old and would hold
		// five records a credential on disk; the audit trail keeps what
		// changed. An existing bucket is updated in place (JetStream drops
		// the surplus revisions).
		history := uint8(5)
		if b.ttl > 0 || b.name == BucketCredentials {
			history = 1
		}
		// Bounded: a record is small, and the buckets that any enrollment
		// session can fill (open enrollments, registration challenges)
		// refuse new records when full rather than filling the disk.
		maxBytes := int64(-1)
		switch {
		case b.name == BucketLogins:
			maxBytes = maxLoginBucketBytes
		case b.ttl > 0:
			maxBytes = maxTTLBucketBytes
		}
		kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
			Bucket: b.name, History: history, TTL: b.ttl, Storage: jetstream.FileStorage,
			MaxValueSize: MaxRecordSize, MaxBytes: maxBytes, Replicas: max(o.Replicas, 1),
		})
		if err != nil {
			return nil, fmt.Errorf("KV bucket %s: %w (is JetStream enabled for the %s account?)", b.name, err, keys.AccountAuth)
		}
		stream, err := js.Stream(ctx, "KV_"+b.name)
		if err != nil {
			return nil, fmt.Errorf("KV bucket %s: its stream: %w", b.name, err)
		}
		*b.dst = bucket{KeyValue: kv, stream: stream, nc: nc, replicated: o.Replicas > 1}
	}
	return &s, nil
}

// bucket is a KV bucket that knows its stream, which Keys asks for the
// last sequence of the keys it lists.
type bucket struct {
	jetstream.KeyValue
	stream     jetstream.Stream
	nc         *nats.Conn
	replicated bool // more than one replica: a direct get may be behind
}

// leaderMsg is a message as the stream's leader holds it (JetStream's
// STREAM.MSG.GET). A KV bucket allows direct gets, which any replica
// answers and a lagging one answers with an older message: a read that a
// decision rests on (the last sequence Keys waits for, GetLatest) asks the
// leader.
type leaderMsg struct {
	Sequence uint64 `json:"seq"`
	Header   []byte `json:"hdrs"`
	Data     []byte `json:"data"`
}

// apiTimeout bounds a JetStream API request whose caller set no deadline
// (nats.go's default for its own).
const apiTimeout = 5 * time.Second

// errNoMsg: the leader holds no message on the subject.
var errNoMsg = errors.New("no message")

// JetStream's error code for a message get that found none.
const errCodeNoMessageFound = 10037

func (b bucket) leaderLast(ctx context.Context, subject string) (*leaderMsg, error) {
	req, err := json.Marshal(struct {
		LastFor string `json:"last_by_subj"`
	}{subject})
	if err != nil {
		return nil, err
	}
	if _, ok := ctx.Deadline(); !ok {
		// As nats.go bounds its own API requests: a request the server
		// dropped (its API queue full, a leader change) must not hang a
		// caller without a deadline.
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, apiTimeout)
		defer cancel()
	}
	m, err := b.nc.RequestWithContext(ctx, "$JS.API.STREAM.MSG.GET.KV_"+b.Bucket(), req)
	if err != nil {
		return nil, err
	}
	var resp struct {
		Message *leaderMsg          `json:"message"`
		Error   *jetstream.APIError `json:"error"`
	}
	if err := json.Unmarshal(m.Data, &resp); err != nil {
		return nil, fmt.Errorf("message get: %w", err)
	}
	switch {
	case resp.Error != nil && resp.Error.ErrorCode == errCodeNoMessageFound:
		return nil, errNoMsg
	case resp.Error != nil:
		return nil, resp.Error
	case resp.Message == nil:
		return nil, jetstream.ErrInvalidJetStreamResponse
	}
	return resp.Message, nil
}

// keysWithMessages are the keys matching filters (all if none) that have
// a message in the stream, a put or a delete marker: the stream's subjects
// (nats.go pages through them).
func (b bucket) keysWithMessages(ctx context.Context, filters []string) ([]string, error) {
	if len(filters) == 0 {
		filters = []string{">"}
	}
	prefix := "$KV." + b.Bucket() + "."
	var out []string
	for _, f := range filters {
		info, err := b.stream.Info(ctx, jetstream.WithSubjectFilter(prefix+f))
		if err != nil {
			return nil, err
		}
		for subj := range info.State.Subjects {
			if k, ok := strings.CutPrefix(subj, prefix); ok {
				out = append(out, k)
			}
		}
	}
	return out, nil
}

// live reports whether key's last message, from the leader, is a put.
func (b bucket) live(ctx context.Context, key string) (bool, error) {
	m, err := b.leaderLast(ctx, "$KV."+b.Bucket()+"."+key)
	if errors.Is(err, errNoMsg) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	del, err := deleteMarker(m)
	return !del && err == nil, err
}

// deleteMarker reports whether m is a KV delete or purge marker.
func deleteMarker(m *leaderMsg) (bool, error) {
	if len(m.Header) == 0 {
		return false, nil
	}
	h, err := nats.DecodeHeadersMsg(m.Header)
	if err != nil {
		return false, fmt.Errorf("headers: %w", err)
	}
	op := h.Get("KV-Operation")
	return op == "DEL" || op == "PURGE", nil
}

// lastSeq is the stream sequence of the last message (a put, or a delete
// or purge marker) on any key matching filters (all keys if none), 0 if
// there is none.
func (b bucket) lastSeq(ctx context.Context, filters []string) (uint64, error) {
	if len(filters) == 0 {
		filters = []string{">"}
	}
	var last uint64
	for _, f := range filters {
		m, err := b.leaderLast(ctx, "$KV."+b.Bucket()+"."+f)
		if errors.Is(err, errNoMsg) {
			continue
		}
		if err != nil {
			return 0, err
		}
		last = max(last, m.Sequence)
	}
	return last, nil
}

// Durable are the buckets whose records outlive a session, in the order a
// backup holds them (verifier/backup.Buckets names the same): the backup
// reads and the restore writes exactly these.
func (s *Store) Durable() []jetstream.KeyValue {
	return []jetstream.KeyValue{s.Hosts, s.Credentials, s.Tokens, s.EKs, s.EKAllow, s.Workloads, s.People}
}

// Get reads a record and its revision. A missing key is api.ErrNotFound.
func Get[T any, P interface {
	*T
	record.Versioned
}](ctx context.Context, kv jetstream.KeyValue, key string) (P, uint64, error) {
	e, err := kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
		if b, ok := kv.(bucket); ok && b.replicated {
			// A replica may answer before it has the record: one another
			// instance just made (a registration's challenge between begin
			// and finish, a join token just created, a credential just
			// registered). A miss is asked of the leader again.
			return GetLatest[T, P](ctx, kv, key)
		}
		return nil, 0, fmt.Errorf("%w: %s/%s", api.ErrNotFound, kv.Bucket(), key)
	}
	if errors.Is(err, jetstream.ErrInvalidKey) {
		return nil, 0, fmt.Errorf("%w: %s/%s", api.ErrNotFound, kv.Bucket(), key)
	}
	if err != nil {
		return nil, 0, unavailable(err, "%s get %s", kv.Bucket(), key)
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

// GetLatest is Get from the stream's leader, for a read a decision rests
// on (a person's record as a fenced credential needs it, whether a
// credential still exists): Get may be answered by a replica that has not
// seen the last write yet. kv must be one of Store's buckets.
func GetLatest[T any, P interface {
	*T
	record.Versioned
}](ctx context.Context, kv jetstream.KeyValue, key string) (P, uint64, error) {
	b, ok := kv.(bucket)
	if !ok {
		return nil, 0, fmt.Errorf("%w: %s get %s: not a bucket of the store", api.ErrUnavailable, kv.Bucket(), key)
	}
	if !jetstreamKey(key) {
		return nil, 0, fmt.Errorf("%w: %s/%s", api.ErrNotFound, kv.Bucket(), key)
	}
	m, err := b.leaderLast(ctx, "$KV."+b.Bucket()+"."+key)
	if errors.Is(err, errNoMsg) {
		return nil, 0, fmt.Errorf("%w: %s/%s", api.ErrNotFound, kv.Bucket(), key)
	}
	if err != nil {
		return nil, 0, unavailable(err, "%s get %s", kv.Bucket(), key)
	}
	switch del, err := deleteMarker(m); {
	case err != nil:
		return nil, 0, unavailable(err, "%s get %s", kv.Bucket(), key)
	case del:
		return nil, 0, fmt.Errorf("%w: %s/%s", api.ErrNotFound, kv.Bucket(), key)
	}
	var v T
	p := P(&v)
	if err := json.Unmarshal(m.Data, p); err != nil {
		return nil, 0, fmt.Errorf("%s/%s: %w", kv.Bucket(), key, err)
	}
	if p.RecordVersion() != record.Version {
		return nil, 0, fmt.Errorf("%s/%s: record version %d, this verifier reads %d", kv.Bucket(), key, p.RecordVersion(), record.Version)
	}
	return p, m.Sequence, nil
}

// jetstreamKey reports whether key is a valid KV key (what Get checks
// before it asks): no wildcard may reach the leader's subject lookup.
func jetstreamKey(key string) bool {
	if key == "" || key[0] == '.' || key[len(key)-1] == '.' {
		return false
	}
	for _, c := range key {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.ContainsRune("-/_=.", c)) {
			return false
		}
	}
	return !strings.Contains(key, "..")
}

// Create stores a new record; an existing key is api.ErrConflict.
func Create(ctx context.Context, kv jetstream.KeyValue, key string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if _, err := kv.Create(ctx, key, b); err != nil {
		if errors.Is(err, jetstream.ErrKeyExists) {
			return fmt.Errorf("%w: %s/%s exists", api.ErrConflict, kv.Bucket(), key)
		}
		return unavailable(err, "%s create %s", kv.Bucket(), key)
	}
	return nil
}

// Update replaces a record if it is still at revision rev (compare-and-set)
// and returns its new revision; otherwise api.ErrConflict.
func Update(ctx context.Context, kv jetstream.KeyValue, key string, v any, rev uint64) (uint64, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return 0, err
	}
	next, err := kv.Update(ctx, key, b, rev)
	if err != nil {
		if errors.Is(err, jetstream.ErrKeyRevisionMismatch) || errors.Is(err, jetstream.ErrKeyExists) {
			return 0, fmt.Errorf("%w: %s/%s", api.ErrConflict, kv.Bucket(), key)
		}
		return 0, unavailable(err, "%s update %s", kv.Bucket(), key)
	}
	return next, nil
}

// mutateAttempts bounds the re-reads of one mutate: each conflict means
// another writer changed the record, so running out means heavy contention.
const mutateAttempts = 20

// Mutate is the one read-modify-write of a record: it reads the record,
// applies f and writes it back with compare-and-set, and on a conflict reads
// and applies f again. An error from f leaves the record unwritten and is
// returned as it is. It returns the record as written and its revision.
func Mutate[T any, P interface {
	*T
	record.Versioned
}](ctx context.Context, kv jetstream.KeyValue, key string, f func(P) error) (P, uint64, error) {
	for range mutateAttempts {
		p, rev, err := Get[T, P](ctx, kv, key)
		if err != nil {
			return nil, 0, err
		}
		if err := f(p); err != nil {
			return nil, 0, err
		}
		next, err := Update(ctx, kv, key, p, rev)
		if errors.Is(err, api.ErrConflict) {
			continue
		}
		if err != nil {
			return nil, 0, err
		}
		return p, next, nil
	}
	return nil, 0, fmt.Errorf("%w: %s/%s changed concurrently %d times", api.ErrConflict, kv.Bucket(), key, mutateAttempts)
}

// Take deletes a record if it is still at revision rev, so that exactly one
// caller consumes a single-use record (a challenge, an enrollment session).
func Take(ctx context.Context, kv jetstream.KeyValue, key string, rev uint64) error {
	if err := kv.Delete(ctx, key, jetstream.LastRevision(rev)); err != nil {
		if errors.Is(err, jetstream.ErrKeyRevisionMismatch) || errors.Is(err, jetstream.ErrKeyExists) {
			return fmt.Errorf("%w: %s/%s taken", api.ErrConflict, kv.Bucket(), key)
		}
		return unavailable(err, "%s delete %s", kv.Bucket(), key)
	}
	return nil
}

// List reads every record of a bucket: all of them, or an error. It
// watches the bucket itself rather than through nats.go's ListKeys, whose
// key channel ends silently both at the end of the keys and when ctx is
// done or the watch's subscription closes: a caller (a host's revocation)
// would then act on part of the bucket as if it were all of it.
func List[T any, P interface {
	*T
	record.Versioned
}](ctx context.Context, kv jetstream.KeyValue) ([]P, error) {
	keys, err := Keys(ctx, kv)
	if err != nil {
		return nil, err
	}
	out := []P{} // JSON [] rather than null when empty
	for _, key := range keys {
		v, _, err := Get[T, P](ctx, kv, key)
		if errors.Is(err, api.ErrNotFound) {
			continue // deleted meanwhile
		}
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, nil
}

// errWatchEnded: the watch's subscription closed before the bucket's
// last key (the connection closed, or the consumer went away).
var errWatchEnded = errors.New("the watch ended before the last key")

// Keys is every key of kv, or every key matching one of filters (NATS
// subject wildcards), sorted, each once: all of them, or an error
// (api.ErrUnavailable). kv must be one of Store's buckets. Use it, never
// kv.ListKeys, whose channel ends silently on a done context.
//
// It does not trust the watch's end-of-initial-values marker, nor the
// pending count on each entry: both come from the server's count of what
// the consumer has left, which is approximate while the bucket is written
// (seen here: a listing of 2000 keys, some rewritten as it ran, ended with
// 1996), and the credentials bucket is rewritten on every connect. Keys
// applies puts and deletes to a set in stream order and reads until it has
// passed the stream's last sequence on the listed keys, read once the
// watch has begun. That is not enough on its own: a key whose message was
// still to come can be rewritten (the bucket keeps one revision, so the
// message is gone) with a sequence past the end read, and the watch
// delivers it only later. So at the end Keys asks again: if nothing was
// written since (the last sequence is still the end), every key's latest
// message is in; else it compares what it holds with the keys the stream
// has messages on now (its subjects) and reads the few it lacks from the
// leader (a key made since the end is in neither or in both), or, when
// many are missing, reads on to the new end. An idle watch reads the end
// again (the message it waits for may have expired).
func Keys(ctx context.Context, kv jetstream.KeyValue, filters ...string) ([]string, error) {
	b, ok := kv.(bucket)
	if !ok {
		return nil, fmt.Errorf("%w: %s list: not a bucket of the store", api.ErrUnavailable, kv.Bucket())
	}
	opts := []jetstream.WatchOpt{jetstream.MetaOnly()}
	var w jetstream.KeyWatcher
	var err error
	if len(filters) == 0 {
		w, err = kv.WatchAll(ctx, opts...)
	} else {
		// WatchFiltered prefixes the caller's slice in place.
		w, err = kv.WatchFiltered(ctx, slices.Clone(filters), opts...)
	}
	if err != nil {
		return nil, unavailable(err, "%s list", kv.Bucket())
	}
	defer stopWatch(w)
	end, err := b.lastSeq(ctx, filters)
	if err != nil {
		return nil, unavailable(err, "%s list: last sequence", kv.Bucket())
	}
	l := listing{keys: map[string]bool{}}
	for {
		if err := l.readTo(ctx, w, b, filters, &end); err != nil {
			return nil, unavailable(err, "%s list", kv.Bucket())
		}
		last, err := b.lastSeq(ctx, filters)
		if err != nil {
			return nil, unavailable(err, "%s list: last sequence", kv.Bucket())
		}
		if last == end {
			break
		}
		whole, err := l.fillMissing(ctx, b, filters)
		if err != nil {
			return nil, unavailable(err, "%s list", kv.Bucket())
		}
		if whole {
			break
		}
		end = last
	}
	var out []string
	for k, live := range l.keys {
		if live {
			out = append(out, k)
		}
	}
	slices.Sort(out)
	return out, nil
}

// listing is what a Keys watch has delivered: each key seen, live (its
// last message a put) or not (a delete or purge marker), and the last
// sequence.
type listing struct {
	keys map[string]bool
	seen uint64
}

// readTo reads w until it has delivered *end, reading *end again when the
// watch is idle.
func (l *listing) readTo(ctx context.Context, w jetstream.KeyWatcher, b bucket, filters []string, end *uint64) error {
	idle := time.NewTimer(keysIdle)
	defer idle.Stop()
	for l.seen < *end {
		select {
		case e, ok := <-w.Updates():
			switch {
			case !ok:
				return errWatchEnded
			case e == nil: // the watcher's marker, see Keys
				continue
			}
			l.keys[e.Key()] = e.Operation() == jetstream.KeyValuePut
			l.seen = e.Revision()
			idle.Reset(keysIdle)
		case <-idle.C:
			last, err := b.lastSeq(ctx, filters)
			if err != nil {
				return fmt.Errorf("last sequence: %w", err)
			}
			*end = last
			idle.Reset(keysIdle)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// fillMissing compares the listing with the keys the stream has messages
// on now: a key the watch has not delivered yet (rewritten past the end
// it read to) is read from the leader, when there are few enough
// (maxMissing); whole reports that no key is missing then. Keys the
// listing holds that the stream no longer has (expired since) are kept
// as they were seen.
func (l *listing) fillMissing(ctx context.Context, b bucket, filters []string) (whole bool, err error) {
	names, err := b.keysWithMessages(ctx, filters)
	if err != nil {
		return false, fmt.Errorf("subjects: %w", err)
	}
	var missing []string
	for _, k := range names {
		if _, ok := l.keys[k]; !ok {
			if missing = append(missing, k); len(missing) > maxMissing {
				return false, nil // read on: the watch brings them
			}
		}
	}
	for _, k := range missing {
		live, err := b.live(ctx, k)
		if err != nil {
			return false, fmt.Errorf("%s: %w", k, err)
		}
		l.keys[k] = live
	}
	return true, nil
}

// maxMissing bounds the keys fillMissing reads one by one.
const maxMissing = 64

// keysIdle is how long Keys waits for the watch before it reads the last
// sequence again (the one it waits for may have expired).
const keysIdle = 200 * time.Millisecond

// stopWatch stops w without making its caller wait: Stop deletes the
// consumer (a request to the server), and the watch's callback holds its
// lock while it hands over an update, which the close of its channel
// waits for. So the rest of the channel is read, until it closes, while
// Stop runs.
func stopWatch(w jetstream.KeyWatcher) {
	go func() {
		for range w.Updates() {
		}
	}()
	go func() { _ = w.Stop() }()
}

// ErrFull: JetStream refused a write for want of space, the server's
// store (max_file_store, or the disk under it) or the account's JetStream
// storage limit. It comes wrapped with api.ErrUnavailable: nothing is
// granted until the space is back, and an operator has to make it.
var ErrFull = errors.New("the JetStream store is full: free space or raise max_file_store (or the account's JetStream storage limit)")

// JetStream's error codes for a write refused for want of resources
// (nats-server's jetstream_errors_generated.go; nats.go names none of them).
const (
	errCodeAccountResourcesExceeded = 10002 // the account's JetStream limit
	errCodeInsufficientResources    = 10023 // the server's max_file_store or max_memory_store
	errCodeStorageResourcesExceeded = 10047 // a stream's reservation does not fit
)

// Full reports whether err is JetStream refusing a write for want of
// space (see ErrFull). The refusal only says "insufficient resources",
// which an operator cannot act on; ErrFull says what to do.
func Full(err error) bool {
	if errors.Is(err, ErrFull) {
		return true
	}
	var apiErr *jetstream.APIError
	if !errors.As(err, &apiErr) {
		return false
	}
	switch apiErr.ErrorCode {
	case errCodeAccountResourcesExceeded, errCodeInsufficientResources, errCodeStorageResourcesExceeded:
		return true
	}
	return false
}

// unavailable wraps a failure of the store itself (not a domain answer)
// with api.ErrUnavailable and what was being done; a full store also with
// ErrFull, whose text says what to do.
func unavailable(err error, format string, args ...any) error {
	if Full(err) {
		return fmt.Errorf("%w: %w: "+format+": %w", append(append([]any{api.ErrUnavailable, ErrFull}, args...), err)...)
	}
	return fmt.Errorf("%w: "+format+": %w", append(append([]any{api.ErrUnavailable}, args...), err)...)
}
