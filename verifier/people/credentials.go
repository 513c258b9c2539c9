package people

import (
	"context"
	"errors"
	"fmt"

	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/verifier/record"
	"github.com/tpmauthn/tpmauthn/verifier/store"
)

// LinkCredential adds cred, just stored, to the person's credentials,
// compare-and-set: a person disabled meanwhile is refused
// (api.ErrLoginInvalid), as their offboarding read the list before this
// credential was on it, and the caller must then delete cred. It also drops
// from the list what can no longer be used, and returns the person's
// earlier credentials on cred's host, which cred replaces (a browser
// credential, without a host, replaces nothing: a person has several
// passkeys).
func (s *Service) LinkCredential(ctx context.Context, p *record.Person, cred *record.Credential) ([]string, error) {
	var replaced []string
	dead := map[string]bool{}
	now := s.cfg.Now()
	for _, id := range p.Credentials {
		c, _, err := store.Get[record.Credential](ctx, s.cfg.Store.Credentials, id)
		switch {
		case errors.Is(err, api.ErrNotFound):
			dead[id] = true
		case err != nil:
			return nil, err
		case c.Status == api.CredentialRevoked || c.Expired(now) || c.Retired(now):
			dead[id] = true
		case cred.Host != "" && c.Host == cred.Host && c.Retires.IsZero():
			replaced = append(replaced, id)
		}
	}
	_, _, err := store.Mutate(ctx, s.cfg.Store.People, p.ID, func(p *record.Person) error {
		if !p.Disabled.IsZero() {
			return fmt.Errorf("%w: %s was disabled: %s", api.ErrLoginInvalid, p.ID, p.DisabledReason)
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
