package people

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/verifier/record"
	"github.com/tpmauthn/tpmauthn/verifier/store"
)

// AddCredential stores a person's new device credential (a TPM key through
// a host's agent, a software key, a passkey) and lists it in their record,
// so that offboarding finds it. The link is a compare-and-set that fails for
// a person disabled meanwhile (their offboarding read the list before this
// credential was on it): then the credential is deleted again. It drops
// from the list what can no longer be used, and returns the person's
// earlier credentials of the same device (same host, or for hostless
// credentials none), which the caller retires.
func (s *Service) AddCredential(ctx context.Context, cred *record.Credential) (replaced []string, err error) {
	if cred.Person == "" {
		return nil, errors.New("people: a person's credential without a person")
	}
	if err := store.Create(ctx, s.cfg.Store.Credentials, cred.ID, cred); errors.Is(err, api.ErrConflict) {
		return nil, fmt.Errorf("%w: credential ID %s exists", api.ErrConflict, cred.ID)
	} else if err != nil {
		return nil, err
	}
	replaced, err = s.link(ctx, cred)
	if err != nil {
		// Not listed with the person, it would escape their offboarding:
		// it must not exist.
		if derr := s.cfg.Store.Credentials.Delete(context.WithoutCancel(ctx), cred.ID); derr != nil {
			s.cfg.Logger.Error("a person's credential not linked to them stays stored", "credential", cred.ID, "error", derr)
		}
		return nil, err
	}
	return replaced, nil
}

func (s *Service) link(ctx context.Context, cred *record.Credential) ([]string, error) {
	p, err := s.Person(ctx, cred.Person)
	if err != nil {
		return nil, err
	}
	var replaced []string
	dead := map[string]bool{}
	now := s.cfg.Now()
	for _, id := range p.Credentials {
		// From the leader: a replica behind a just-registered credential
		// would have it dropped from the list as gone.
		c, _, err := store.GetLatest[record.Credential](ctx, s.cfg.Store.Credentials, id)
		switch {
		case errors.Is(err, api.ErrNotFound):
			dead[id] = true
		case err != nil:
			return nil, err
		case c.Status == api.CredentialRevoked:
			dead[id] = true
		case (c.Expired(now) || c.Retired(now)) && !liveSession(c, now):
			// Not before its last session ends: one granted before the
			// credential retired may last its session_ttl past that, and
			// an offboarding or a regroup finds sessions through this
			// list (found by review).
			dead[id] = true
		case cred.Host != "" && c.Host == cred.Host && c.Retires.IsZero():
			replaced = append(replaced, id)
		}
	}
	_, _, err = store.Mutate(ctx, s.cfg.Store.People, p.ID, func(p *record.Person) error {
		if !p.Disabled.IsZero() {
			return fmt.Errorf("%w: %s since %s: %s", ErrDisabled, p.ID, p.Disabled.Format(time.RFC3339), p.DisabledReason)
		}
		kept := p.Credentials[:0]
		for _, id := range p.Credentials {
			if !dead[id] {
				kept = append(kept, id)
			}
		}
		p.Credentials = append(kept, cred.ID)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("add credential %s to person %s: %w", cred.ID, p.ID, err)
	}
	return replaced, nil
}

// liveSession reports whether c names a session that has not expired.
func liveSession(c *record.Credential, now time.Time) bool {
	return slices.ContainsFunc(c.Sessions, func(r record.SessionRef) bool { return r.Expires.After(now) })
}
