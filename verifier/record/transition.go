package record

import (
	"errors"
	"fmt"
	"time"

	"github.com/tpmauthn/tpmauthn/api"
)

// ErrTransition is a status change the state machine does not allow (use
// errors.Is): the record is left as it was.
var ErrTransition = errors.New("status change not allowed")

// hostEdges are the legal host status changes. Revoked is final but for
// offboarding (which frees the EK to enroll again); offboarded is final.
var hostEdges = map[api.HostStatus][]api.HostStatus{
	api.HostPending: {api.HostActive, api.HostRevoked, api.HostOffboarded},
	api.HostActive:  {api.HostRevoked, api.HostOffboarded},
	api.HostRevoked: {api.HostOffboarded},
}

// credentialEdges are the legal credential status changes: a tamper signal
// quarantines an active credential, an operator releases it after review,
// and revoked is final.
var credentialEdges = map[api.CredentialStatus][]api.CredentialStatus{
	api.CredentialActive:      {api.CredentialQuarantined, api.CredentialRevoked},
	api.CredentialQuarantined: {api.CredentialActive, api.CredentialRevoked},
}

// Transition moves the host to status to, for reason, at now. Asking for the
// status it has already is allowed and changes nothing (revoking twice is
// not an error; the first reason stays).
func (h *Host) Transition(to api.HostStatus, reason string, now time.Time) error {
	if h.Status == to {
		return nil
	}
	if !legal(hostEdges[h.Status], to) {
		return fmt.Errorf("%w: host %s is %s, cannot become %s", ErrTransition, h.ID, h.Status, to)
	}
	h.Status, h.Reason, h.Updated = to, reason, now.UTC()
	return nil
}

// Transition moves the credential to status to, for reason, at now. Asking
// for the status it has already is allowed and changes nothing.
func (c *Credential) Transition(to api.CredentialStatus, reason string, now time.Time) error {
	if c.Status == to {
		return nil
	}
	if !legal(credentialEdges[c.Status], to) {
		return fmt.Errorf("%w: credential %s is %s, cannot become %s", ErrTransition, c.ID, c.Status, to)
	}
	c.Status, c.Reason, c.Updated = to, reason, now.UTC()
	return nil
}

func legal[S comparable](edges []S, to S) bool {
	for _, e := range edges {
		if e == to {
			return true
		}
	}
	return false
}
