package fleet

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/internal/jstest"
	"github.com/tpmauthn/tpmauthn/verifier/store"
)

func TestMisses(t *testing.T) {
	now := time.Unix(1000, 0)
	c := NewMisses(5*time.Second, 3)
	c.now = func() time.Time { return now }
	c.Miss("a")
	if !c.Missed("a") || c.Missed("b") {
		t.Fatal("a miss not remembered, or one made up")
	}
	c.Forget("a")
	if c.Missed("a") {
		t.Fatal("a forgotten miss is still remembered")
	}
	c.Miss("a")
	now = now.Add(6 * time.Second)
	if c.Missed("a") {
		t.Fatal("a miss outlived its TTL")
	}
	for i := range 10 {
		c.Miss(fmt.Sprint(i))
		now = now.Add(time.Millisecond)
	}
	if len(c.m) > 3 {
		t.Fatalf("%d misses kept, at most 3", len(c.m))
	}
	if !c.Missed("9") {
		t.Fatal("the newest miss was evicted")
	}
}

// A credential ID looked up in vain is answered from the cache: with the
// store gone, it is still unknown (not unavailable), while a new one is
// unavailable.
func TestCredentialMissCostsNoRead(t *testing.T) {
	js := jstest.Start(t)
	st, err := store.Open(t.Context(), js.NC, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	f := New(st, nil)
	if _, _, _, err := f.Credential(t.Context(), "bogus"); !errors.Is(err, api.ErrNotFound) {
		t.Fatalf("unknown credential: %v", err)
	}
	js.NC.Close()
	if _, _, _, err := f.Credential(t.Context(), "bogus"); !errors.Is(err, api.ErrNotFound) {
		t.Fatalf("unknown credential again, store gone: %v, want the cached not found", err)
	}
	if _, _, _, err := f.Credential(t.Context(), "other"); !errors.Is(err, api.ErrUnavailable) {
		t.Fatalf("a new credential ID with the store gone: %v, want unavailable", err)
	}
	f.CredentialCreated("bogus")
	if _, _, _, err := f.Credential(t.Context(), "bogus"); !errors.Is(err, api.ErrUnavailable) {
		t.Fatalf("a created credential's miss is still cached: %v", err)
	}
}
