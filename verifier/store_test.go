package verifier

import (
	"bytes"
	"fmt"
	"testing"

	"github.com/nats-io/nats.go/jetstream"
)

// A credentials bucket made by an earlier version (history 5) is updated in
// place at start: one revision a key, the latest kept.
func TestCredentialsBucketHistoryUpgraded(t *testing.T) {
	dir := t.TempDir()
	start := func() *Verifier {
		v, err := New(Config{DataDir: dir, NATSListen: "127.0.0.1:-1"})
		if err != nil {
			t.Fatal(err)
		}
		if err := v.Start(t.Context()); err != nil {
			t.Fatal(err)
		}
		return v
	}
	v := start()
	old, err := v.st.js.CreateOrUpdateKeyValue(t.Context(), jetstream.KeyValueConfig{Bucket: bucketCreds, History: 5, Storage: jetstream.FileStorage})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		if _, err := old.Put(t.Context(), "c1", fmt.Appendf(nil, `{"v":1,"id":"c1","counter":%d}`, i)); err != nil {
			t.Fatal(err)
		}
	}
	v.Close()

	v = start()
	defer v.Close()
	st, err := v.st.creds.Status(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if st.History() != 1 || st.Values() != 1 {
		t.Fatalf("credentials bucket after start: history %d, %d values; want 1 and 1", st.History(), st.Values())
	}
	e, err := v.st.creds.Get(t.Context(), "c1")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(e.Value(), []byte(`"counter":4`)) {
		t.Fatalf("the latest revision was not kept: %s", e.Value())
	}
}
