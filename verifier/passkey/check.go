package passkey

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"net/url"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/attestation"
	"github.com/tpmauthn/tpmauthn/verifier/record"
	"github.com/tpmauthn/tpmauthn/verifier/store"
)

// Checker decides, for the connect path (verifier/authn/workload), what a
// browser credential's assertion must name and whether a session key's
// certifier still stands.
type Checker struct {
	want attestation.AssertionCheck
	kv   jetstream.KeyValue // credentials
}

// NewChecker checks the assertions of the pages at publicURL: its host is
// the RP ID, its origin the clientDataJSON's.
func NewChecker(publicURL string, credentials jetstream.KeyValue) (*Checker, error) {
	u, err := url.Parse(publicURL)
	if err != nil || u.Hostname() == "" {
		return nil, fmt.Errorf("passkeys: public URL %q: want scheme://host[:port]", publicURL)
	}
	return &Checker{want: attestation.AssertionCheck{RPIDHash: sha256.Sum256([]byte(u.Hostname())), Origin: u.Scheme + "://" + u.Host},
		kv: credentials}, nil
}

// Check is nil, with the RP ID hash and origin a browser credential's
// assertion must name, for a passkey, or for a session key whose certifier
// is its person's passkey, active and unexpired (read from the store: a
// removed passkey takes its session keys with it at their next connect).
func (c *Checker) Check(ctx context.Context, cred *record.Credential) (attestation.AssertionCheck, error) {
	if !cred.Browser() {
		return attestation.AssertionCheck{}, fmt.Errorf("%w: %s is not a browser credential", api.ErrRevoked, cred.ID)
	}
	if cred.Kind == record.KindSessionKey {
		pk, _, err := store.Get[record.Credential](ctx, c.kv, cred.Certifier)
		switch {
		case errors.Is(err, api.ErrNotFound):
			return attestation.AssertionCheck{}, fmt.Errorf("%w: session key %s: its passkey %s is gone", api.ErrRevoked, cred.ID, cred.Certifier)
		case err != nil:
			return attestation.AssertionCheck{}, err
		case pk.Kind != record.KindPasskey || pk.Person != cred.Person || !pk.Browser():
			return attestation.AssertionCheck{}, fmt.Errorf("%w: session key %s: %s is not its person's passkey", api.ErrRevoked, cred.ID, cred.Certifier)
		case pk.Status != api.CredentialActive || pk.Expired(time.Now()):
			return attestation.AssertionCheck{}, fmt.Errorf("%w: session key %s: its passkey %s is %s", api.ErrRevoked, cred.ID, pk.ID, pk.Status)
		}
	}
	return c.want, nil
}
