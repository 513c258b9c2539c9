package operators

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/audit"
	"github.com/tpmauthn/tpmauthn/verifier/alert"
	"github.com/tpmauthn/tpmauthn/verifier/keys"
	"github.com/tpmauthn/tpmauthn/verifier/natsapi"
	"github.com/tpmauthn/tpmauthn/verifier/policy"
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

// Actor is who called: the operator key, or a session with admin roles.
type Actor struct {
	// Name is the audit trail's actor: "operator", or "person:ID via
	// SESSION" (the session's name names the device credential), or the
	// session's name for a workload.
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

// Wrap puts the gate in front of the operator API's endpoints.
func (g *Gate) Wrap(eps []natsapi.Endpoint) []natsapi.Endpoint {
	out := make([]natsapi.Endpoint, len(eps))
	for i, ep := range eps {
		op := strings.TrimPrefix(ep.Subject, api.SubjectAdminPrefix)
		h := ep.Handler
		ep.Handler = func(ctx context.Context, body []byte) (any, error) {
			ctx, err := g.check(ctx, op)
			if err != nil {
				return nil, err
			}
			return h(ctx, body)
		}
		out[i] = ep
	}
	return out
}

// check names the caller of op and refuses one whose roles do not grant it.
func (g *Gate) check(ctx context.Context, op string) (context.Context, error) {
	r, n := natsapi.RequesterOf(ctx)
	switch {
	case n == 0:
		// A user of the verifier's own account: the operator key (the
		// verifier itself makes no admin requests).
		a := Actor{Name: "operator"}
		if g.cfg.Policy().HasAdmins() {
			a.Name = "operator (break-glass key)"
			g.breakGlass(op)
		}
		return context.WithValue(ctx, actorKey{}, a), nil
	case r == nil || r.Account != keys.AccountApp:
		return nil, fmt.Errorf("%w: the request does not say who made it", api.ErrForbidden)
	}
	a, roles := actorOf(r)
	if !g.cfg.Policy().AdminAllows(roles, op) {
		g.cfg.Trail.RecordNow(ctx, audit.Event{Kind: "admin." + op, Result: audit.DenyText, Actor: a.Name, Person: a.Person, Roles: roles,
			Reason: "no role of the caller grants " + op})
		return nil, fmt.Errorf("%w: %s (roles %v)", api.ErrForbidden, op, roles)
	}
	return context.WithValue(ctx, actorKey{}, a), nil
}

// actorOf names a session from its server-written tags.
func actorOf(r *natsapi.Requester) (Actor, []string) {
	var roles []string
	a := Actor{Name: r.Name}
	for _, t := range r.Tags {
		if v, ok := strings.CutPrefix(t, "role:"); ok {
			roles = append(roles, v)
		}
		if v, ok := strings.CutPrefix(t, "person:"); ok {
			a.Person = v
		}
	}
	if a.Person != "" {
		a.Name = "person:" + a.Person + " via " + r.Name
	}
	return a, roles
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
