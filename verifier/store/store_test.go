package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/internal/jstest"
	"github.com/tpmauthn/tpmauthn/verifier/record"
)

// A credentials bucket made by an earlier version (history 5) is updated in
// place by Open: one revision a key, the latest kept.
func TestCredentialsBucketHistoryUpgraded(t *testing.T) {
	js := jstest.Start(t)
	old, err := js.JS.CreateOrUpdateKeyValue(t.Context(), jetstream.KeyValueConfig{Bucket: BucketCredentials, History: 5, Storage: jetstream.FileStorage})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		if _, err := old.Put(t.Context(), "c1", fmt.Appendf(nil, `{"v":1,"id":"c1","counter":%d}`, i)); err != nil {
			t.Fatal(err)
		}
	}
	s, err := Open(t.Context(), js.NC, Options{})
	if err != nil {
		t.Fatal(err)
	}
	st, err := s.Credentials.Status(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if st.History() != 1 || st.Values() != 1 {
		t.Fatalf("credentials bucket after Open: history %d, %d values; want 1 and 1", st.History(), st.Values())
	}
	e, err := s.Credentials.Get(t.Context(), "c1")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(e.Value(), []byte(`"counter":4`)) {
		t.Fatalf("the latest revision was not kept: %s", e.Value())
	}
}

// Mutate re-reads and re-applies on a conflict, leaves the record as it was
// when f refuses, and says which outcome is which.
func TestMutate(t *testing.T) {
	js := jstest.Start(t)
	s, err := Open(t.Context(), js.NC, Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	if err := Create(ctx, s.Credentials, "c1", &record.Credential{V: record.Version, ID: "c1", Status: api.CredentialActive}); err != nil {
		t.Fatal(err)
	}
	calls := 0
	c, _, err := Mutate(ctx, s.Credentials, "c1", func(c *record.Credential) error {
		calls++
		if calls == 1 { // another writer gets in between the read and the write
			if _, err := s.Credentials.Put(ctx, "c1", []byte(`{"v":1,"id":"c1","status":"active","counter":7}`)); err != nil {
				t.Fatal(err)
			}
		}
		c.Counter++
		return nil
	})
	if err != nil || calls != 2 || c.Counter != 8 {
		t.Fatalf("after a conflict: %v, %d calls, counter %d; want the change re-applied to the newer record (8)", err, calls, c.Counter)
	}
	refused := errors.New("refused")
	if _, _, err := Mutate(ctx, s.Credentials, "c1", func(c *record.Credential) error { c.Counter = 0; return refused }); !errors.Is(err, refused) {
		t.Fatalf("f refused: %v", err)
	}
	if got, _, _ := Get[record.Credential](ctx, s.Credentials, "c1"); got.Counter != 8 {
		t.Fatalf("a refused change was written: counter %d", got.Counter)
	}
	if _, _, err := Mutate(ctx, s.Credentials, "nope", func(*record.Credential) error { return nil }); !errors.Is(err, api.ErrNotFound) {
		t.Fatalf("missing record: %v, want api.ErrNotFound", err)
	}
	// The store failing is not a domain answer.
	js.NC.Close()
	if _, _, err := Get[record.Credential](ctx, s.Credentials, "c1"); !errors.Is(err, api.ErrUnavailable) || errors.Is(err, api.ErrNotFound) {
		t.Fatalf("closed connection: %v, want api.ErrUnavailable", err)
	}
}

// M5: the buckets had no caps. A record beyond MaxRecordSize is refused
// (and as an outage, not a domain answer), and the buckets any enrollment
// session can fill are bounded.
func TestBucketsBounded(t *testing.T) {
	js := jstest.Start(t)
	s, err := Open(t.Context(), js.NC, Options{})
	if err != nil {
		t.Fatal(err)
	}
	big := &record.Challenge{V: record.Version, Host: strings.Repeat("h", MaxRecordSize)}
	if err := Create(t.Context(), s.Challenges, "c1", big); !errors.Is(err, api.ErrUnavailable) {
		t.Fatalf("a record over the size bound: %v, want refused", err)
	}
	for _, kv := range []jetstream.KeyValue{s.Enroll, s.Challenges, s.Logins} {
		st, err := kv.Status(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if cfg := st.(*jetstream.KeyValueBucketStatus).StreamInfo().Config; cfg.MaxBytes <= 0 || cfg.MaxMsgSize <= 0 {
			t.Fatalf("bucket %s: max bytes %d, max record %d: unbounded", kv.Bucket(), cfg.MaxBytes, cfg.MaxMsgSize)
		}
	}
}

// A write JetStream refuses for want of space is the store failing (fail
// closed), and says so in words an operator can act on: JetStream's own
// "insufficient resources" names neither the store nor the remedy.
func TestStoreFullIsUnavailable(t *testing.T) {
	// The bounded buckets (open enrollments and challenges, 64 MiB each;
	// logins, 16 MiB) reserve their bytes (reserved, not used: the filler
	// writes it all), and 1 MiB more.
	const maxStore = 2*maxTTLBucketBytes + maxLoginBucketBytes + 1<<20
	js := jstest.Start(t, func(o *server.Options) { o.JetStreamMaxStore = maxStore })
	s, err := Open(t.Context(), js.NC, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Probe(t.Context()); err != nil {
		t.Fatalf("probe with room: %v", err)
	}
	if _, err := js.JS.CreateStream(t.Context(), jetstream.StreamConfig{Name: "FILLER", Subjects: []string{"filler"}, MaxBytes: -1}); err != nil {
		t.Fatal(err)
	}
	chunk := make([]byte, 1<<20) // the whole store is to fill: reservations are not usage
	for i := 0; ; i++ {
		if _, err := js.JS.Publish(t.Context(), "filler", chunk); err != nil {
			break
		}
		if i > 2*maxStore/len(chunk) {
			t.Fatal("JetStream takes writes beyond max_file_store")
		}
	}
	err = Create(t.Context(), s.Hosts, "h1", &record.Host{V: record.Version, ID: "h1"})
	if !errors.Is(err, api.ErrUnavailable) || !errors.Is(err, ErrFull) || !Full(err) {
		t.Fatalf("create with the store full: %v, want api.ErrUnavailable and ErrFull", err)
	}
	if !strings.Contains(err.Error(), "max_file_store") {
		t.Fatalf("the reason %q does not say what to do", err)
	}
	if err := s.Probe(t.Context()); !errors.Is(err, ErrFull) {
		t.Fatalf("probe with the store full: %v, want ErrFull", err)
	}
	if err := js.JS.DeleteStream(t.Context(), "FILLER"); err != nil {
		t.Fatal(err)
	}
	if err := s.Probe(t.Context()); err != nil {
		t.Fatalf("probe with the space back: %v", err)
	}
	// Other failures are not called full.
	js.NC.Close()
	if err := s.Probe(t.Context()); !errors.Is(err, api.ErrUnavailable) || errors.Is(err, ErrFull) {
		t.Fatalf("closed connection: %v, want api.ErrUnavailable without ErrFull", err)
	}
}

// List returns every record or an error, never a part: a deadline that
// passes while it waits for the bucket's keys, or a connection lost meanwhile,
// is an error. nats.go's ListKeys ends its key channel silently on either,
// so a host revoke could have revoked some of its credentials and said
// done.
func TestListWholeOrError(t *testing.T) {
	js := jstest.Start(t)
	s, err := Open(t.Context(), js.NC, Options{})
	if err != nil {
		t.Fatal(err)
	}
	const n = 3000
	for i := range n {
		id := fmt.Sprintf("c%d", i)
		if _, err := s.Credentials.Put(t.Context(), id, []byte(`{"v":1,"id":"`+id+`","status":"active"}`)); err != nil {
			t.Fatal(err)
		}
	}
	partial := 0
	for i := range 40 {
		ctx, cancel := context.WithTimeout(t.Context(), time.Duration(1+i)*time.Millisecond)
		got, err := List[record.Credential](ctx, s.Credentials)
		cancel()
		switch {
		case err != nil && !errors.Is(err, api.ErrUnavailable):
			t.Fatalf("deadline %d ms: %v, want ErrUnavailable", 1+i, err)
		case err == nil && len(got) != n:
			partial++
		}
	}
	if partial > 0 {
		t.Fatalf("%d of 40 lists under a deadline returned part of the bucket without an error", partial)
	}
	if got, err := List[record.Credential](t.Context(), s.Credentials); err != nil || len(got) != n {
		t.Fatalf("without a deadline: %d records, %v", len(got), err)
	}
}

// Keys with a filter lists the matching keys only (a host's workloads).
func TestKeysFiltered(t *testing.T) {
	js := jstest.Start(t)
	s, err := Open(t.Context(), js.NC, Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"h1.a", "h1.b", "h2.a"} {
		if _, err := s.Workloads.Put(t.Context(), k, []byte(`{}`)); err != nil {
			t.Fatal(err)
		}
	}
	got, err := Keys(t.Context(), s.Workloads, "h1.*")
	slices.Sort(got)
	if err != nil || !slices.Equal(got, []string{"h1.a", "h1.b"}) {
		t.Fatalf("h1.*: %v, %v", got, err)
	}
	if got, err := Keys(t.Context(), s.Workloads, "h3.*"); err != nil || len(got) != 0 {
		t.Fatalf("no match: %v, %v", got, err)
	}
}

// Keys lists every key while other writers rewrite them: the credentials
// bucket keeps one revision a key, so a rewrite during a listing removes the
// revision the watch was about to deliver, and a listing that trusted the
// server's pending count ended before the last key (a host revoke that
// missed a credential). Each key is listed once; keys deleted and made
// again meanwhile may or may not be in, the others always are.
func TestKeysWhileWritten(t *testing.T) {
	js := jstest.Start(t)
	s, err := Open(t.Context(), js.NC, Options{})
	if err != nil {
		t.Fatal(err)
	}
	const n = 2000
	for i := range n {
		if _, err := s.Credentials.Put(t.Context(), fmt.Sprintf("c%d", i), []byte(`{}`)); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Workloads.Put(t.Context(), fmt.Sprintf("h%d.w%d", i%2, i), []byte(`{}`)); err != nil {
			t.Fatal(err)
		}
	}
	ctx, stop := context.WithCancel(t.Context())
	var writers sync.WaitGroup
	for w := range 4 {
		writers.Go(func() {
			for i := w; ctx.Err() == nil; i += 4 {
				_, _ = s.Credentials.Put(ctx, fmt.Sprintf("c%d", i%n), []byte(`{"n":1}`))
				_, _ = s.Workloads.Put(ctx, fmt.Sprintf("h%d.w%d", i%2, i%n), []byte(`{"n":1}`))
				// Churn: a key made and deleted, on and off.
				_, _ = s.Credentials.Put(ctx, fmt.Sprintf("tmp%d", i%50), []byte(`{}`))
				_ = s.Credentials.Delete(ctx, fmt.Sprintf("tmp%d", (i+25)%50))
			}
		})
	}
	defer func() { stop(); writers.Wait() }()
	stable := func(prefix string) func(string) bool {
		return func(k string) bool { return strings.HasPrefix(k, prefix) }
	}
	cases := []struct {
		name   string
		kv     jetstream.KeyValue
		filter []string
		want   int
		keep   func(string) bool
	}{
		{"all", s.Credentials, nil, n, stable("c")},
		{"filtered", s.Workloads, []string{"h1.*"}, n / 2, stable("h1.")},
	}
	for round := range 10 {
		for _, c := range cases {
			got, err := Keys(t.Context(), c.kv, c.filter...)
			if err != nil {
				t.Fatalf("%s round %d: %v", c.name, round, err)
			}
			if len(slices.Compact(slices.Clone(got))) != len(got) {
				t.Fatalf("%s round %d: a key listed twice", c.name, round)
			}
			kept := 0
			for _, k := range got {
				if c.keep(k) {
					kept++
				} else if !strings.HasPrefix(k, "tmp") {
					t.Fatalf("%s round %d: %s does not match %v", c.name, round, k, c.filter)
				}
			}
			if kept != c.want {
				t.Fatalf("%s round %d: %d of %d keys listed while they were rewritten", c.name, round, kept, c.want)
			}
		}
	}
}

// Keys of an empty bucket, or with a filter nothing matches, is empty at
// once; a KV bucket that is not the store's is refused, not listed with a
// guess at where its end is.
func TestKeysEmptyAndForeign(t *testing.T) {
	js := jstest.Start(t)
	s, err := Open(t.Context(), js.NC, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if got, err := Keys(t.Context(), s.EKAllow); err != nil || len(got) != 0 {
		t.Fatalf("empty bucket: %v, %v", got, err)
	}
	foreign, err := s.JS.CreateOrUpdateKeyValue(t.Context(), jetstream.KeyValueConfig{Bucket: "foreign"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Keys(t.Context(), foreign); !errors.Is(err, api.ErrUnavailable) {
		t.Fatalf("a foreign bucket: %v, want ErrUnavailable", err)
	}
}

// GetLatest reads the record as the stream's leader holds it: the value
// and revision Get gives, deleted and purged keys as not found, and a key
// that is no valid KV key (a wildcard) as not found, never as a match.
func TestGetLatest(t *testing.T) {
	js := jstest.Start(t)
	s, err := Open(t.Context(), js.NC, Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	for _, id := range []string{"a", "b", "c"} {
		if err := Create(ctx, s.Credentials, id, &record.Credential{V: record.Version, ID: id, Status: api.CredentialActive}); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Credentials.Delete(ctx, "b"); err != nil {
		t.Fatal(err)
	}
	if err := s.Credentials.Purge(ctx, "c"); err != nil {
		t.Fatal(err)
	}
	c, rev, err := GetLatest[record.Credential](ctx, s.Credentials, "a")
	_, getRev, _ := Get[record.Credential](ctx, s.Credentials, "a")
	if err != nil || c.ID != "a" || rev != getRev {
		t.Fatalf("a: %+v rev %d (Get: %d), %v", c, rev, getRev, err)
	}
	for _, key := range []string{"b", "c", "missing", "a.*", ">", "", ".a"} {
		if _, _, err := GetLatest[record.Credential](ctx, s.Credentials, key); !errors.Is(err, api.ErrNotFound) {
			t.Errorf("%q: %v, want ErrNotFound", key, err)
		}
	}
	foreign, err := s.JS.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "foreign2"})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := GetLatest[record.Credential](ctx, foreign, "a"); !errors.Is(err, api.ErrUnavailable) {
		t.Fatalf("a foreign bucket: %v, want ErrUnavailable", err)
	}
}

// R10's residual, closed: a listing that lacks a key (its message still
// to come) but holds another the stream no longer has (expired since) has
// as many keys as the stream has subjects, which once passed for whole.
// The keys themselves are compared now, and the missing one is read from
// the leader, live or deleted as it is.
func TestFillMissing(t *testing.T) {
	js := jstest.Start(t)
	s, err := Open(t.Context(), js.NC, Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"a", "b", "c"} {
		if _, err := s.Workloads.Put(t.Context(), k, []byte(`{}`)); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Workloads.Delete(t.Context(), "c"); err != nil {
		t.Fatal(err)
	}
	b := s.Workloads.(bucket)
	l := listing{keys: map[string]bool{"a": true, "expired": true, "c": true}}
	whole, err := l.fillMissing(t.Context(), b, nil)
	if err != nil || !whole {
		t.Fatalf("fillMissing: %v, whole %v", err, whole)
	}
	want := map[string]bool{"a": true, "b": true, "c": true, "expired": true}
	if !maps.Equal(l.keys, want) {
		t.Fatalf("keys %v, want %v (b read from the leader; c as the watch saw it)", l.keys, want)
	}
	l = listing{keys: map[string]bool{}}
	if _, err := l.fillMissing(t.Context(), b, []string{"c"}); err != nil || l.keys["c"] {
		t.Fatalf("a deleted key read from the leader: live %v, %v", l.keys["c"], err)
	}

	// Many missing: read on rather than one request each.
	for i := range maxMissing + 1 {
		if _, err := s.Workloads.Put(t.Context(), fmt.Sprintf("m%d", i), []byte(`{}`)); err != nil {
			t.Fatal(err)
		}
	}
	l = listing{keys: map[string]bool{}}
	if whole, err := l.fillMissing(t.Context(), b, nil); err != nil || whole || len(l.keys) != 0 {
		t.Fatalf("with %d missing: whole %v, %d read, %v", maxMissing+1, whole, len(l.keys), err)
	}
}

// A record one instance has just made is found by another at once, on
// three replicas: a direct get answered by a replica that has not applied
// the write yet was a miss (a registration's finish at one verifier
// refused the challenge its begin had made at another: challenge_invalid,
// seen in TestEmbeddedClusterHA). Get asks the leader before it says
// "not found".
func TestGetSeesAnotherInstancesWrite(t *testing.T) {
	servers := jstest.Cluster(t, 3)
	writer, err := Open(t.Context(), servers[0].NC, Options{Replicas: 3})
	if err != nil {
		t.Fatal(err)
	}
	reader, err := Open(t.Context(), servers[2].NC, Options{Replicas: 3})
	if err != nil {
		t.Fatal(err)
	}
	const n = 300
	direct := 0 // misses of a plain direct get, for the log
	for i := range n {
		key := fmt.Sprintf("c%d", i)
		if err := Create(t.Context(), writer.Challenges, key, &record.Challenge{V: record.Version, Host: "h"}); err != nil {
			t.Fatal(err)
		}
		if _, err := reader.Challenges.Get(t.Context(), key); err != nil {
			direct++
		}
		if _, _, err := Get[record.Challenge](t.Context(), reader.Challenges, key); err != nil {
			t.Fatalf("record %d made at one server, read at another: %v", i, err)
		}
	}
	t.Logf("a plain direct get right after the write missed %d of %d", direct, n)

	// The lag itself does not show on a quiet machine: a replica that has
	// not applied the write is stood in for by one that misses every get.
	lagging := reader.Challenges.(bucket)
	lagging.KeyValue = missingKV{lagging.KeyValue}
	if _, _, err := Get[record.Challenge](t.Context(), lagging, "c0"); err != nil {
		t.Fatalf("a replica's miss was not asked of the leader: %v", err)
	}
	// A miss is still a miss, and says so.
	if _, _, err := Get[record.Challenge](t.Context(), reader.Challenges, "never"); !errors.Is(err, api.ErrNotFound) {
		t.Fatalf("a key nobody made: %v, want ErrNotFound", err)
	}
}

// missingKV is a bucket whose direct gets miss, as a replica's that has
// not applied the last writes.
type missingKV struct{ jetstream.KeyValue }

func (missingKV) Get(context.Context, string) (jetstream.KeyValueEntry, error) {
	return nil, jetstream.ErrKeyNotFound
}
