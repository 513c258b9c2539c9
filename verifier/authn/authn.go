// Package authn decides who a NATS connection is: a registry of
// authentication methods the auth-callout transport (verifier/callout) asks
// in turn. Each method recognizes its own CONNECT (a workload's assertion, a
// join token, a host's proof, an allow-listed EK) and either grants a user
// JWT or denies with a reason for the audit trail.
//
// A new kind of credential (a person's passkey, a delegated agent) is a new
// Method registered by its own package; neither the transport nor the other
// methods change.
package authn

import (
	"context"
	"fmt"

	"github.com/nats-io/jwt/v2"

	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/audit"
)

// Request is one connect to decide.
type Request struct {
	// Claims is the server's authorization request, validated by the
	// transport (issuer, audience, expiry, user nkey).
	Claims *jwt.AuthorizationRequestClaims
	// Event is the decision's audit record: "deny" until the transport
	// grants; a method fills in who the connect is for and why.
	Event *audit.Event
	// Prepare, if set, is handed a grant's claims as soon as the method
	// has checked the connect's proof, before its last write, with Event
	// complete: the transport signs the claims and stores the event
	// meanwhile. Only the claims the method returns are granted. It may be
	// called again if the last write is retried.
	Prepare func(*jwt.UserClaims)
}

// Method is one way to authenticate a connect.
type Method interface {
	// Match reports whether the CONNECT is this method's to decide.
	Match(co *jwt.ConnectOptions) bool
	// Authorize grants the connect a user JWT's claims, or denies it. A
	// nil error is the only grant.
	Authorize(ctx context.Context, r *Request) (*jwt.UserClaims, error)
}

// Registry holds the methods in the order they are asked.
type Registry struct {
	methods []Method
}

// Add appends methods; the first that matches a connect decides it.
func (r *Registry) Add(m ...Method) { r.methods = append(r.methods, m...) }

// Decide asks the first method that matches the connect. A connect no
// method recognizes is denied.
func (r *Registry) Decide(ctx context.Context, req *Request) (*jwt.UserClaims, error) {
	for _, m := range r.methods {
		if m.Match(&req.Claims.ConnectOptions) {
			return m.Authorize(ctx, req)
		}
	}
	return nil, fmt.Errorf("%w: no join token, EK allow-list name or credential", api.ErrNotFound)
}
