package people

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/audit"
	"github.com/tpmauthn/tpmauthn/verifier/policy"
	"github.com/tpmauthn/tpmauthn/verifier/record"
	"github.com/tpmauthn/tpmauthn/verifier/store"
)

// What the IdPs' provisioning (verifier/scim), the periodic re-check and
// the operators change in a person record, besides a login.

// Provision records what an IdP's SCIM client says of the person (idp,
// subject): the record is created if the person never logged in (with the
// issuer and subject claim the policy has for idp, so that their first
// login lands in it), or its SCIM attributes updated. Whether they are
// active is the caller's: Disable, Enable.
func (s *Service) Provision(ctx context.Context, idp *policy.IdP, subject string, u record.SCIMUser) (*record.Person, error) {
	now := s.cfg.Now().UTC()
	u.Updated = now
	key := record.PersonID(idp.Name, subject)
	p := &record.Person{V: record.Version, ID: key, IdP: idp.Name, Subject: subject, Issuer: idp.Issuer,
		SubjectClaim: idp.SubjectClaim, Created: now, SCIM: &u}
	err := store.Create(ctx, s.cfg.Store.People, key, p)
	if err == nil {
		s.cfg.Trail.RecordNow(ctx, audit.Event{Kind: "person.provision", Result: audit.OK, Person: key, Actor: "scim:" + idp.Name,
			Reason: fmt.Sprintf("provisioned by %s's SCIM client before a login (userName %q)", idp.Name, u.UserName)})
		return p, nil
	}
	if !errors.Is(err, api.ErrConflict) {
		return nil, fmt.Errorf("store person %s: %w", key, err)
	}
	p, _, err = store.Mutate(ctx, s.cfg.Store.People, key, func(p *record.Person) error {
		p.SCIM = &u
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("update person %s: %w", key, err)
	}
	return p, nil
}

// SetSCIM changes the SCIM attributes of an existing person.
func (s *Service) SetSCIM(ctx context.Context, id string, f func(u *record.SCIMUser)) (*record.Person, error) {
	p, _, err := store.Mutate(ctx, s.cfg.Store.People, id, func(p *record.Person) error {
		u := record.SCIMUser{}
		if p.SCIM != nil {
			u = *p.SCIM
		}
		f(&u)
		u.Updated = s.cfg.Now().UTC()
		p.SCIM = &u
		return nil
	})
	return p, err
}

// UpdateGroups sets the person's groups to f(their groups now), in one
// compare-and-set (f may run more than once), and returns the record
// before and after.
func (s *Service) UpdateGroups(ctx context.Context, id string, f func(groups []string) []string) (before, after *record.Person, err error) {
	after, _, err = store.Mutate(ctx, s.cfg.Store.People, id, func(p *record.Person) error {
		b := *p
		b.Groups = slices.Clone(p.Groups)
		before = &b
		p.Groups = slices.Compact(slices.Sorted(slices.Values(f(slices.Clone(p.Groups)))))
		if len(p.Groups) == 0 {
			p.Groups = nil
		}
		b.Groups = slices.Compact(slices.Sorted(slices.Values(b.Groups)))
		if len(b.Groups) == 0 {
			b.Groups = nil
		}
		if !slices.Equal(b.Groups, p.Groups) {
			p.GroupsGen++
		}
		return nil
	})
	return before, after, err
}

// Fenced records that the change of person id's groups to generation gen
// (groups) has all its fences and kicks done. A later change stays
// unfinished until its own regroup says so.
func (s *Service) Fenced(ctx context.Context, id string, gen uint64, groups []string) error {
	_, _, err := store.Mutate(ctx, s.cfg.Store.People, id, func(p *record.Person) error {
		if p.FencedGen < gen {
			p.FencedGen, p.FencedGroups = gen, slices.Clone(groups)
		}
		return nil
	})
	return err
}

// DropSCIM forgets what SCIM said of the person (a SCIM DELETE): the
// record stays, disabled, so that a later login is still refused.
func (s *Service) DropSCIM(ctx context.Context, id string) error {
	_, _, err := store.Mutate(ctx, s.cfg.Store.People, id, func(p *record.Person) error {
		p.SCIM = nil
		return nil
	})
	return err
}

// Enable makes a disabled person active again: they may log in. Their
// credentials stay revoked (revoked is final): they register new ones.
func (s *Service) Enable(ctx context.Context, id, reason, actor string) (*record.Person, error) {
	p, _, err := store.Mutate(ctx, s.cfg.Store.People, id, func(p *record.Person) error {
		p.Disabled, p.DisabledReason = time.Time{}, ""
		return nil
	})
	ev := audit.Event{Kind: "person.enable", Result: audit.OK, Person: id, Actor: actor, Reason: reason}
	if err != nil {
		ev.Result, ev.Reason = audit.Error, reason+": "+err.Error()
	}
	s.cfg.Trail.RecordNow(ctx, ev)
	return p, err
}

// RefreshToken opens p's sealed refresh token ("" if it has none).
func (s *Service) RefreshToken(p *record.Person) (string, error) {
	if len(p.RefreshToken) == 0 {
		return "", nil
	}
	if s.cfg.Sealer == nil {
		return "", fmt.Errorf("%w: no refresh-token key configured", ErrSealed)
	}
	return s.cfg.Sealer.Open(p.ID, p.RefreshToken)
}

// SetRefreshToken keeps token ("" drops it) as p's refresh token, sealed.
func (s *Service) SetRefreshToken(ctx context.Context, id, token string) error {
	_, _, err := store.Mutate(ctx, s.cfg.Store.People, id, func(p *record.Person) error {
		p.RefreshToken = nil
		if token != "" && s.cfg.Sealer != nil {
			p.RefreshToken = s.cfg.Sealer.Seal(p.ID, token)
		}
		return nil
	})
	return err
}

// ErrTokenChanged: the person's refresh token is no longer the one a
// replacement expected (a new login stored another, or offboarding dropped
// it).
var ErrTokenChanged = errors.New("the person's refresh token changed meanwhile")

// ReplaceRefreshToken keeps next as person id's refresh token if the one
// stored is still old and the person is not disabled (ErrTokenChanged
// otherwise): what the re-check does with a token the IdP rotated, which
// must neither undo a newer login's token nor give an offboarded person
// one back.
func (s *Service) ReplaceRefreshToken(ctx context.Context, id, old, next string) error {
	_, _, err := store.Mutate(ctx, s.cfg.Store.People, id, func(p *record.Person) error {
		if cur, err := s.RefreshToken(p); err != nil || cur != old || cur == "" || !p.Disabled.IsZero() {
			return ErrTokenChanged // a disabled person gets no token back either
		}
		p.RefreshToken = s.cfg.Sealer.Seal(p.ID, next)
		return nil
	})
	return err
}

// ClaimCheck takes person id's periodic re-check if it is due (LastCheck
// at least interval ago, active, with a refresh token): one compare-and-
// set, so that of several verifier instances one refreshes the token (a
// rotated refresh token spent twice would look like a revoked one).
func (s *Service) ClaimCheck(ctx context.Context, id string, interval time.Duration) (*record.Person, bool, error) {
	now := s.cfg.Now().UTC()
	due := false
	p, _, err := store.Mutate(ctx, s.cfg.Store.People, id, func(p *record.Person) error {
		due = p.Disabled.IsZero() && len(p.RefreshToken) > 0 && !now.Before(p.LastCheck.Add(interval))
		if !due {
			return errNotDue
		}
		p.LastCheck = now
		return nil
	})
	if errors.Is(err, errNotDue) {
		return nil, false, nil
	}
	return p, due, err
}

var errNotDue = errors.New("not due")

// List reads every person record (the people bucket also holds SCIM
// groups, whose keys have a '.', unlike a person's ID).
func (s *Service) List(ctx context.Context) ([]*record.Person, error) {
	keys, err := store.Keys(ctx, s.cfg.Store.People)
	if err != nil {
		return nil, fmt.Errorf("list people: %w", err)
	}
	out := []*record.Person{}
	for _, key := range keys {
		if strings.Contains(key, ".") {
			continue
		}
		p, err := s.Person(ctx, key)
		if errors.Is(err, api.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, nil
}

// Sealer is the sealer of refresh tokens at rest (nil without one), for
// other stores of them (oidclogin's held rotations).
func (s *Service) Sealer() *Sealer { return s.cfg.Sealer }
