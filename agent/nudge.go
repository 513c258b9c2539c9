package agent

import (
	"context"
	"errors"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tpmauthn/tpmauthn/api"
)

// watchLoop holds a credentials.watch open at the verifier (verifier/nudge):
// when an operator rotates, revokes or reissues one of this host's
// credentials, the verifier answers it and the rotation loop checks at once,
// instead of at its next RotationCheck. Failures back off; the periodic
// check still finds every change.
func (a *Agent) watchLoop(ctx context.Context) {
	backoff := time.Duration(0)
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		changed, err := a.watchOnce(ctx)
		switch {
		case ctx.Err() != nil:
			return
		case err != nil:
			backoff = watchBackoff(err)
			a.log.Debug("credentials watch failed; the periodic check stands", "error", err, "retry_in", backoff)
			continue
		}
		backoff = 0
		if changed {
			a.log.Info("the verifier says an operator changed this host's credentials: checking now")
			select {
			case a.nudged <- struct{}{}:
			default: // a check is already due
			}
		}
	}
}

// watchOnce holds one credentials.watch until the verifier answers.
func (a *Agent) watchOnce(ctx context.Context) (bool, error) {
	nc, err := a.verifierConn()
	if err != nil {
		return false, err
	}
	host := a.hostID()
	// A little longer than the verifier holds it: a lost answer ends here.
	ctx, cancel := context.WithTimeout(ctx, api.MaxCredentialsWatch+10*time.Second)
	defer cancel()
	var res api.CredentialsWatchResponse
	err = call(ctx, nc, api.HostScope(host).Subject(api.OpCredentialsWatch),
		&api.CredentialsWatchRequest{HostID: host, Wait: api.MaxCredentialsWatch}, &res)
	return res.Changed, err
}

// watchBackoff: a host the verifier refuses (each try is a TPM signature
// and a callout at the verifier) is tried again in ten minutes; a verifier
// without the endpoint (older, or none serving) in a minute; anything else
// in a few seconds. The periodic check goes on meanwhile.
func watchBackoff(err error) time.Duration {
	var ve *VerifierError
	switch {
	case errors.Is(err, ErrHostRefused):
		return 10 * time.Minute
	case errors.Is(err, nats.ErrNoResponders) || (errors.As(err, &ve) && ve.Code == api.CodeUpgradeAgent):
		return time.Minute
	}
	return 5 * time.Second
}
