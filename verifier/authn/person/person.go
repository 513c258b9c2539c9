// Package person decides what a person's device credential may do when it
// connects: the workload method (verifier/authn/workload) checks the key,
// its host and its counter as for any TPM credential, and asks this package
// whether the person it acts for is still active and which roles their IdP
// groups grant now.
//
// People are read from a watch of the people bucket: a person disabled by
// offboarding (SCIM, a failed re-check, an operator) is refused at their
// next connect, before their credentials' revocation reaches this instance.
package person

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/verifier/people"
	"github.com/tpmauthn/tpmauthn/verifier/policy"
	"github.com/tpmauthn/tpmauthn/verifier/record"
	"github.com/tpmauthn/tpmauthn/verifier/store"
)

// Directory is the people as the connect path reads them.
type Directory struct {
	kv   jetstream.KeyValue
	m    sync.Map // person ID -> *record.Person
	w    jetstream.KeyWatcher
	done chan struct{}
}

// Start loads the people bucket and follows it until Close.
func Start(ctx context.Context, kv jetstream.KeyValue) (*Directory, error) {
	w, err := kv.WatchAll(context.WithoutCancel(ctx))
	if err != nil {
		return nil, fmt.Errorf("watch %s: %w", kv.Bucket(), err)
	}
	d := &Directory{kv: kv, w: w, done: make(chan struct{})}
	go d.follow()
	return d, nil
}

func (d *Directory) follow() {
	defer close(d.done)
	for e := range d.w.Updates() {
		if e == nil {
			continue // initial values loaded
		}
		var p record.Person
		if e.Operation() != jetstream.KeyValuePut || json.Unmarshal(e.Value(), &p) != nil || p.V != record.Version {
			d.m.Delete(e.Key()) // read from KV at the next connect
			continue
		}
		d.m.Store(e.Key(), &p)
	}
}

// Close stops the watch.
func (d *Directory) Close() {
	_ = d.w.Stop()
	<-d.done
}

// person is the record, from the watch or (not seen yet) from KV.
func (d *Directory) person(ctx context.Context, id string) (*record.Person, error) {
	if v, ok := d.m.Load(id); ok {
		return v.(*record.Person), nil
	}
	p, _, err := store.Get[record.Person](ctx, d.kv, id)
	if errors.Is(err, api.ErrNotFound) {
		return nil, fmt.Errorf("%w: person %s is unknown", api.ErrRevoked, id)
	}
	return p, err
}

// current is the person of cred as recent as cred needs: one that lists
// cred (a record from before its registration does not, and may predate a
// regroup that cred's registration came after) with groups of cred's
// fence's generation or later (a regroup took a role from cred after this
// instance's copy was made). The watch's copy when it will do, else the
// record from the stream's leader, which is the latest by definition
// (even where an older verifier rewrote it without its generation).
func (d *Directory) current(ctx context.Context, cred *record.Credential) (*record.Person, error) {
	p, err := d.person(ctx, cred.Person)
	if err != nil || recentFor(p, cred) {
		return p, err
	}
	p, _, err = store.GetLatest[record.Person](ctx, d.kv, cred.Person)
	switch {
	case errors.Is(err, api.ErrNotFound):
		return nil, fmt.Errorf("%w: person %s is unknown", api.ErrRevoked, cred.Person)
	case err != nil:
		return nil, err
	case !slices.Contains(p.Credentials, cred.ID):
		// Offboarding revokes what the person lists: a credential it does
		// not list would escape it.
		return nil, fmt.Errorf("%w: person %s does not list credential %s", api.ErrRevoked, p.ID, cred.ID)
	}
	return p, nil
}

func recentFor(p *record.Person, cred *record.Credential) bool {
	return p.GroupsGen >= cred.GroupsGen && slices.Contains(p.Credentials, cred.ID)
}

// Roles is nil error and the roles of cred's person now: active, their IdP
// still the one in the policy, and their groups (as the IdP last said, at
// the generation cred needs: see current) granting at least one role at
// cred's assurance. Anything else refuses.
func (d *Directory) Roles(ctx context.Context, pol *policy.Policy, cred *record.Credential) ([]string, error) {
	p, err := d.current(ctx, cred)
	if err != nil {
		return nil, err
	}
	if !p.Disabled.IsZero() {
		return nil, fmt.Errorf("%w: person %s is disabled: %s", api.ErrRevoked, p.ID, p.DisabledReason)
	}
	if err := people.CheckIdP(pol.People, p); err != nil {
		return nil, fmt.Errorf("%w: %w", api.ErrRevoked, err)
	}
	// An assurance the record does not state counts as the weakest.
	assurance := cred.Assurance
	if assurance != policy.AssuranceHardware {
		assurance = policy.AssuranceSoftware
	}
	roles := pol.RolesForPerson(policy.Person{IdP: p.IdP, Groups: p.Groups, Assurance: assurance,
		Synced: cred.Synced, SessionKey: cred.Kind == record.KindSessionKey})
	if len(roles) == 0 {
		return nil, fmt.Errorf("%w: person %s (%s groups %q, %s credential)", api.ErrNoRoles, p.ID, p.IdP, p.Groups, assurance)
	}
	return roles, nil
}
