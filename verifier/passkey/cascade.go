package passkey

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/verifier/record"
)

// Cascade revokes a passkey's session keys whenever the passkey leaves the
// active state, whoever changed it (its person on /passkeys, an operator's
// revoke or quarantine, offboarding, another verifier instance): the
// session keys' live sessions are kicked then (their next connect is
// refused anyway: Checker reads the certifier).
type Cascade struct {
	h  *Handler
	w  jetstream.KeyWatcher
	wg sync.WaitGroup
}

// StartCascade watches the credentials bucket until Close.
func (h *Handler) StartCascade(ctx context.Context) (*Cascade, error) {
	w, err := h.cfg.Store.Credentials.WatchAll(context.WithoutCancel(ctx), jetstream.UpdatesOnly())
	if err != nil {
		return nil, fmt.Errorf("watch credentials: %w", err)
	}
	c := &Cascade{h: h, w: w}
	c.wg.Go(func() {
		for e := range w.Updates() {
			if e == nil || e.Operation() != jetstream.KeyValuePut {
				continue
			}
			var st struct {
				Kind   string               `json:"kind"`
				Status api.CredentialStatus `json:"status"`
				Person string               `json:"person"`
			}
			if json.Unmarshal(e.Value(), &st) != nil || st.Kind != record.KindPasskey || st.Status == api.CredentialActive {
				continue
			}
			c.revoke(e.Key(), st.Person, string(st.Status))
		}
	})
	return c, nil
}

func (c *Cascade) revoke(passkey, person, status string) {
	ctx := context.Background()
	p, err := c.h.cfg.People.Person(ctx, person)
	if err != nil {
		c.h.cfg.Logger.Warn("a passkey left service, its session keys were not looked up (their next connect is refused)", keyCredential, passkey, keyError, err)
		return
	}
	c.h.revokeSessionKeys(ctx, p, func(k *record.Credential) bool { return k.Certifier == passkey }, "its passkey is "+status)
}

// Close stops the watch and waits for it.
func (c *Cascade) Close() {
	_ = c.w.Stop()
	c.wg.Wait()
}
