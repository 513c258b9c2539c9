// Package testenv gives the verifier's rooms what their tests need around
// them: a real JetStream server, the store, the fleet and the audit trail on
// it, and a few readers. Skipped under -short (it starts a nats-server).
package testenv

import (
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nkeys"

	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/audit"
	"github.com/tpmauthn/tpmauthn/internal/jstest"
	"github.com/tpmauthn/tpmauthn/verifier/auditlog"
	"github.com/tpmauthn/tpmauthn/verifier/fleet"
	"github.com/tpmauthn/tpmauthn/verifier/record"
	"github.com/tpmauthn/tpmauthn/verifier/store"
)

// Env is a JetStream server with the verifier's state on it.
type Env struct {
	*jstest.Server
	Store  *store.Store
	Fleet  *fleet.Fleet
	Audit  *auditlog.Log
	Trail  *auditlog.Trail
	Issuer nkeys.KeyPair // signs the audit trail
}

// New starts the server and opens the state, all closed when the test ends.
func New(tb testing.TB) *Env {
	tb.Helper()
	js := jstest.Start(tb)
	st, err := store.Open(tb.Context(), js.NC, store.Options{})
	if err != nil {
		tb.Fatal(err)
	}
	issuer, err := nkeys.CreateAccount()
	if err != nil {
		tb.Fatal(err)
	}
	a, err := auditlog.Open(tb.Context(), js.JS, issuer, auditlog.Config{})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(a.Close)
	f := fleet.New(st, nil)
	if err := f.Start(tb.Context()); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(f.Close)
	return &Env{Server: js, Store: st, Fleet: f, Audit: a, Trail: auditlog.NewTrail(a, 8, nil), Issuer: issuer}
}

// PutCredential stores a credential of host h-test with the given status.
func (e *Env) PutCredential(tb testing.TB, id string, status api.CredentialStatus) {
	tb.Helper()
	now := time.Now().UTC()
	c := &record.Credential{V: record.Version, ID: id, Host: "h-test", Workload: "w", Status: status, Created: now, Updated: now}
	b, err := json.Marshal(c)
	if err != nil {
		tb.Fatal(err)
	}
	if _, err := e.Store.Credentials.Put(tb.Context(), id, b); err != nil {
		tb.Fatal(err)
	}
}

// Credential reads a credential record from KV.
func (e *Env) Credential(tb testing.TB, id string) *record.Credential {
	tb.Helper()
	c, _, err := store.Get[record.Credential](tb.Context(), e.Store.Credentials, id)
	if err != nil {
		tb.Fatal(err)
	}
	return c
}

// Events are the audit trail's events so far, after a flush.
func (e *Env) Events(tb testing.TB) []audit.Event {
	tb.Helper()
	e.Audit.Flush()
	raws, err := e.Audit.ReadRaw(tb.Context(), 1, 1<<20)
	if err != nil {
		tb.Fatal(err)
	}
	out := make([]audit.Event, 0, len(raws))
	for _, r := range raws {
		var ev audit.Event
		if err := json.Unmarshal(r.Data, &ev); err != nil {
			tb.Fatal(err)
		}
		out = append(out, ev)
	}
	return out
}

// LastEvent is the last event in the audit trail.
func (e *Env) LastEvent(tb testing.TB) (audit.Event, error) {
	evs := e.Events(tb)
	if len(evs) == 0 {
		return audit.Event{}, errors.New("the audit trail is empty")
	}
	return evs[len(evs)-1], nil
}
