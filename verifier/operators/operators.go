package operators

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/audit"
	"github.com/tpmauthn/tpmauthn/verifier/alert"
	"github.com/tpmauthn/tpmauthn/verifier/natsapi"
	"github.com/tpmauthn/tpmauthn/verifier/policy"
	"github.com/tpmauthn/tpmauthn/verifier/record"
)

type alerter interface {
	Alert(kind string, e audit.Event)
}

type auditor interface {
	RecordNow(context.Context, audit.Event)
}

// Config is what the gate needs.
type Config struct {
	Policy func() *policy.Policy
	// Credential reads a credential record from the store (not a cache:
	// one revoked a moment ago by another instance must not operate).
	Credential func(ctx context.Context, id string) (*record.Credential, error)
	// Roles are the roles a person's credential has now, as at connect
	// (verifier/authn/person: the person active, their IdP the policy's,
	// their groups at the credential's assurance).
	Roles  func(ctx context.Context, pol *policy.Policy, c *record.Credential) ([]string, error)
	Alerts alerter
	Trail  auditor
	Logger *slog.Logger
}

// Gate checks each operator API request's caller.
type Gate struct {
	cfg Config
	// lastAlert is when the break-glass alert was last raised: at most one
	// a minute (every use is audited).
	mu        sync.Mutex
	lastAlert time.Time
}

// New returns a Gate.
func New(cfg Config) *Gate {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Gate{cfg: cfg}
}

// Actor is who called: the operator key, or a person.
type Actor struct {
	// Name is the audit trail's actor: "operator", "operator (break-glass
	// key)", or "person:ID via credential CRED".
	Name string
	// Person is the person's ID, if a person called.
	Person string
}

type actorKey struct{}

// ActorOf is the request's caller as the gate named it ("operator" for a
// context the gate did not see).
func ActorOf(ctx context.Context) Actor {
	if a, ok := ctx.Value(actorKey{}).(Actor); ok {
		return a
	}
	return Actor{Name: "operator"}
}

// Wrap puts the gate in front of the operator API's endpoints. Each
// operation is served twice: on SubjectAdminPrefix + op, which only the
// verifier's own account reaches (the operator key), and on
// AdminPersonSubject(*, *, op), exported to the workload account, where the
// server lets a person's session publish for its own person and credential
// only.
func (g *Gate) Wrap(eps []natsapi.Endpoint) []natsapi.Endpoint {
	var out []natsapi.Endpoint
	for _, ep := range eps {
		op := strings.TrimPrefix(ep.Subject, api.SubjectAdminPrefix)
		h := ep.Handler
		out = append(out,
			natsapi.Endpoint{Subject: ep.Subject, Handler: func(ctx context.Context, body []byte) (any, error) {
				return h(g.operator(ctx, op), body)
			}},
			natsapi.Endpoint{Subject: api.AdminPersonSubject("*", "*", op), Name: "person-" + strings.ReplaceAll(op, ".", "-"),
				Handler: func(ctx context.Context, body []byte) (any, error) {
					ctx, err := g.person(ctx, op)
					if err != nil {
						return nil, err
					}
					return h(ctx, body)
				}},
		)
	}
	return out
}

// operator names the operator key's caller: only the verifier's own
// account reaches these subjects. While people operate the fleet, it is the
// break-glass credential.
func (g *Gate) operator(ctx context.Context, op string) context.Context {
	a := Actor{Name: "operator"}
	if g.cfg.Policy().HasAdmins() {
		a.Name = "operator (break-glass key)"
		g.breakGlass(op)
	}
	return context.WithValue(ctx, actorKey{}, a)
}

// person checks a person's request: the subject names the person and the
// credential (the server let the session publish there only for its own),
// and the credential, the person and the roles their groups grant now must
// allow op. Nothing a client writes in headers counts.
func (g *Gate) person(ctx context.Context, op string) (context.Context, error) {
	rest := strings.TrimPrefix(natsapi.RequestSubject(ctx), api.SubjectAdminPersonPrefix)
	personID, rest, ok1 := strings.Cut(rest, ".")
	credID, gotOp, ok2 := strings.Cut(rest, ".")
	if !ok1 || !ok2 || gotOp != op || personID == "" || credID == "" {
		return nil, fmt.Errorf("%w: subject %q", api.ErrForbidden, natsapi.RequestSubject(ctx))
	}
	a := Actor{Name: "person:" + personID + " via credential " + credID, Person: personID}
	roles, err := g.personRoles(ctx, personID, credID, op)
	if err == nil && !g.cfg.Policy().AdminAllows(roles, op) {
		err = fmt.Errorf("%w: %s (roles %v)", api.ErrForbidden, op, roles)
	}
	if err != nil {
		g.cfg.Trail.RecordNow(ctx, audit.Event{Kind: "admin." + op, Result: audit.DenyText, Actor: a.Name, Person: personID, Credential: credID,
			Roles: roles, Reason: err.Error()})
		return nil, err
	}
	return context.WithValue(ctx, actorKey{}, a), nil
}

// personRoles are the roles the person's groups grant now through this
// credential, which must be theirs and active; anything but reading takes
// a hardware credential (a TPM key, a device-bound passkey), never a key
// file or a browser's session key.
func (g *Gate) personRoles(ctx context.Context, personID, credID, op string) ([]string, error) {
	c, err := g.cfg.Credential(ctx, credID)
	switch {
	case err != nil:
		return nil, fmt.Errorf("%w: credential %s: %w", api.ErrForbidden, credID, err)
	case c.Person != personID:
		return nil, fmt.Errorf("%w: credential %s is not person %s's", api.ErrForbidden, credID, personID)
	case c.Status != api.CredentialActive || c.Expired(time.Now()) || c.Retired(time.Now()):
		return nil, fmt.Errorf("%w: credential %s is %s or past its end", api.ErrForbidden, credID, c.Status)
	case c.Assurance != policy.AssuranceHardware && !slices.Contains(api.AdminReadOps, op):
		return nil, fmt.Errorf("%w: credential %s is not a hardware credential: %s takes one", api.ErrForbidden, credID, op)
	}
	roles, err := g.cfg.Roles(ctx, g.cfg.Policy(), c)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", api.ErrForbidden, err)
	}
	return roles, nil
}

// breakGlass raises the alert, at most once a minute.
func (g *Gate) breakGlass(op string) {
	g.mu.Lock()
	now := time.Now()
	raise := now.Sub(g.lastAlert) >= time.Minute
	if raise {
		g.lastAlert = now
	}
	g.mu.Unlock()
	if raise {
		g.cfg.Alerts.Alert(alert.BreakGlass, audit.Event{Actor: "operator (break-glass key)",
			Reason: "the operator key file was used (" + op + ") while the policy has people operate the fleet; further uses this minute are audited, not alerted"})
	}
}
