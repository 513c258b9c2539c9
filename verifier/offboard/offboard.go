package offboard

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/audit"
	"github.com/tpmauthn/tpmauthn/verifier/alert"
	"github.com/tpmauthn/tpmauthn/verifier/auditlog"
	"github.com/tpmauthn/tpmauthn/verifier/people"
	"github.com/tpmauthn/tpmauthn/verifier/policy"
	"github.com/tpmauthn/tpmauthn/verifier/record"
	"github.com/tpmauthn/tpmauthn/verifier/store"
)

// Sources of an offboarding (the audit event's actor starts with one).
const (
	SourceSCIM     = "scim"
	SourceRecheck  = "recheck"
	SourceOperator = "operator"
)

type statusSetter interface {
	SetCredentialStatus(ctx context.Context, id string, status api.CredentialStatus, reason string, check func(*record.Credential) error) (*record.Credential, error)
}

type kicker interface {
	KickAll(ctx context.Context, c *record.Credential) (int, error)
}

type alerter interface {
	Alert(kind string, e audit.Event)
}

// Revoker revokes a refresh token at the person's IdP (RFC 7009).
type Revoker interface {
	RevokeRefresh(ctx context.Context, idp, token string) error
}

// Config is what a Service needs.
type Config struct {
	People   *people.Service
	Store    *store.Store
	Fleet    statusSetter
	Sessions kicker
	Alerts   alerter
	Trail    *auditlog.Trail
	Policy   func() *policy.Policy
	Logger   *slog.Logger
}

// Service offboards people and narrows their sessions.
type Service struct {
	cfg    Config
	mu     sync.Mutex
	rev    Revoker
	closed bool // Close: no more background retries
	// prev is the policy a reload replaced, until prevUntil (PolicyReplaced).
	prev      *policy.Policy
	prevUntil time.Time
	// pending is the unfinished regroups FinishFences has seen, by person.
	pendingMu sync.Mutex
	pending   map[string]pendingFence
}

// New returns a Service.
func New(cfg Config) *Service {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Service{cfg: cfg}
}

// Close stops the background retries of failed regroup kicks (a retry
// due later does nothing): the changes they were for stay unfinished, for
// another instance's sweep.
func (s *Service) Close() {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
}

func (s *Service) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// SetRevoker sets what revokes refresh tokens at the IdPs (the relying
// party, once the HTTP listener serves it).
func (s *Service) SetRevoker(r Revoker) {
	s.mu.Lock()
	s.rev = r
	s.mu.Unlock()
}

func (s *Service) revoker() Revoker {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.rev
}

// Result is what an offboarding did.
type Result struct {
	Person *record.Person `json:"person"`
	// Revoked are the credentials this offboarding revoked; Kicked the live
	// sessions its own kicks ended (every verifier's revocation watch kicks
	// a revoked credential's sessions too, and may be first: 0 is no sign
	// that a session is still up).
	Revoked []string `json:"revoked"`
	Kicked  int      `json:"kicked"`
	// IdPRevoked: the refresh token was revoked at the IdP.
	IdPRevoked bool `json:"idp_revoked"`
}

// revokeTimeout bounds the RFC 7009 call: the sessions are gone by then.
const revokeTimeout = 5 * time.Second

// Offboard disables person id and takes everything live from them (see
// the package doc). actor names who asked (scim:okta, recheck:okta,
// operator, …). What could not be kicked is an error wrapping
// api.ErrUnavailable; the person stays disabled and the credentials
// revoked either way, and asking again kicks again.
func (s *Service) Offboard(ctx context.Context, id, reason, actor string) (*Result, error) {
	if err := s.cfg.People.Disable(ctx, id, reason, actor); err != nil {
		return nil, fmt.Errorf("offboard %s: %w", id, err)
	}
	p, err := s.cfg.People.Person(ctx, id)
	if err != nil {
		return nil, fmt.Errorf("offboard %s: %w", id, err)
	}
	res := &Result{Person: p}
	why := "person " + id + " offboarded by " + actor + ": " + reason
	revoked, kicked, _, cutErr := s.cut(ctx, p.Credentials, func(*record.Credential) action { return revokeAndKick }, 0, why, actor)
	res.Revoked, res.Kicked = revoked, kicked
	idpErr := s.revokeRefresh(ctx, p)
	res.IdPRevoked = idpErr == nil && len(p.RefreshToken) > 0
	ev := audit.Event{Kind: "person.offboard", Result: audit.OK, Person: id, Actor: actor,
		Reason: fmt.Sprintf("%s; %d credentials revoked (%s), %d sessions kicked, refresh token %s", reason, len(revoked),
			strings.Join(revoked, ","), kicked, refreshOutcome(p, idpErr))}
	if cutErr != nil {
		ev.Result, ev.Reason = audit.Error, ev.Reason+"; "+cutErr.Error()
	}
	s.cfg.Trail.RecordNow(ctx, ev)
	if len(revoked) > 0 || kicked > 0 || strings.HasPrefix(actor, SourceRecheck) {
		s.cfg.Alerts.Alert(alert.PersonOffboarded, audit.Event{Person: id, Actor: actor, Reason: ev.Reason})
	}
	s.cfg.Logger.Info("person offboarded", keyPerson, id, keyActor, actor, "revoked", len(revoked), "kicked", kicked)
	if cutErr != nil {
		return res, fmt.Errorf("%w: person %s is disabled and their credentials revoked, but: %w", api.ErrUnavailable, id, cutErr)
	}
	return res, nil
}

func refreshOutcome(p *record.Person, err error) string {
	switch {
	case len(p.RefreshToken) == 0:
		return "none kept"
	case err != nil:
		return "dropped, not revoked at the IdP: " + err.Error()
	}
	return "revoked at the IdP and dropped"
}

// revokeRefresh revokes p's refresh token at the IdP and drops it from the
// record (dropped even when the IdP cannot be reached: the person is
// disabled, a re-check would not spend it).
func (s *Service) revokeRefresh(ctx context.Context, p *record.Person) error {
	if len(p.RefreshToken) == 0 {
		return nil
	}
	token, err := s.cfg.People.RefreshToken(p)
	if err == nil {
		if r := s.revoker(); r == nil {
			err = errors.New("no relying party to revoke it (no HTTP listener)")
		} else {
			rctx, cancel := context.WithTimeout(ctx, revokeTimeout)
			err = r.RevokeRefresh(rctx, p.IdP, token)
			cancel()
		}
	}
	if derr := s.cfg.People.SetRefreshToken(ctx, p.ID, ""); derr != nil {
		err = errors.Join(err, derr)
	}
	if err != nil {
		s.cfg.Logger.Warn("refresh token not revoked at the IdP", keyPerson, p.ID, keyError, err)
	}
	return err
}

// action is what cut does to one credential.
type action int

const (
	leave action = iota
	kickOnly
	revokeAndKick
)

// cut does to each credential of ids what act says (revoke it, kick its
// sessions), all at once: each KickAll waits for every server's answer, so
// one after another would add up past a second.
//
// A fence (non-zero: a regroup's new Person.GroupsGen) is raised on each
// credential kicked only, see cutOne.
func (s *Service) cut(ctx context.Context, ids []string, act func(*record.Credential) action, fence uint64, why, actor string) (revoked []string, kicked int, failed []string, err error) {
	var (
		mu   sync.Mutex
		wg   sync.WaitGroup
		errs []error
	)
	for _, cid := range slices.Compact(slices.Sorted(slices.Values(ids))) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, did, n, err := s.cutOne(ctx, cid, act, fence, why, actor)
			mu.Lock()
			defer mu.Unlock()
			if did {
				revoked = append(revoked, c.ID)
			}
			kicked += n
			if err != nil {
				failed = append(failed, cid)
				errs = append(errs, fmt.Errorf("credential %s: %w", cid, err))
			}
		}()
	}
	wg.Wait()
	slices.Sort(revoked)
	slices.Sort(failed)
	return revoked, kicked, failed, errors.Join(errs...)
}

// cutOne does to credential id what act says: revoke it (unless it is
// revoked already) and kick its sessions, or kick them only.
//
// Kicking only, it first raises the credential's GroupsGen to fence (0:
// none; a generation never goes down), in a compare-and-set that writes
// the record even when nothing changes, and kicks the sessions of the
// record it wrote: a connect that read the person's old groups either committed
// before (its session is in that record, kicked) or loses its
// compare-and-set and decides again, with a person record of this
// generation or later (verifier/authn/person). A connect that is granted
// after the kick cannot hold the roles the regroup took away.
func (s *Service) cutOne(ctx context.Context, id string, act func(*record.Credential) action, fence uint64, why, actor string) (*record.Credential, bool, int, error) {
	c, _, err := store.Get[record.Credential](ctx, s.cfg.Store.Credentials, id)
	if errors.Is(err, api.ErrNotFound) {
		return nil, false, 0, nil // never stored, or removed: nothing to cut
	}
	if err != nil {
		return nil, false, 0, err
	}
	a := act(c)
	if a == leave {
		return c, false, 0, nil
	}
	if a == kickOnly {
		// Always a write, even when the fence is there already (a later
		// regroup's, or a generation an older verifier reset) or there is
		// none (a policy reload): the compare-and-set makes any connect
		// that read the record before commit again, and the sessions
		// kicked are those of the record written, not of a read a lagging
		// replica may have answered.
		fenced, _, err := store.Mutate(ctx, s.cfg.Store.Credentials, id, func(c *record.Credential) error {
			c.GroupsGen = max(c.GroupsGen, fence)
			return nil
		})
		switch {
		case err == nil:
			c = fenced
		case errors.Is(err, api.ErrNotFound):
			return nil, false, 0, nil
		default:
			// Kick what the record held all the same (those sessions
			// hold the role taken away); the fence is retried.
			n, kerr := s.cfg.Sessions.KickAll(ctx, c)
			return c, false, n, errors.Join(fmt.Errorf("fence the credential at groups generation %d: %w", fence, err), kerr)
		}
	}
	did := false
	if a == revokeAndKick && c.Status != api.CredentialRevoked {
		r, err := s.cfg.Fleet.SetCredentialStatus(ctx, id, api.CredentialRevoked, why, nil)
		switch {
		case err == nil:
			c, did = r, true
			s.cfg.Trail.Record(audit.Event{Kind: "revoke", Result: audit.OK, Host: c.Host, Workload: c.Workload,
				Credential: c.ID, Person: c.Person, Reason: why, Actor: actor})
		case errors.Is(err, record.ErrTransition):
			// Revoked meanwhile: its sessions are kicked below all the same.
		default:
			return c, false, 0, err
		}
	}
	n, err := s.cfg.Sessions.KickAll(ctx, c)
	return c, did, n, err
}

// Attribute keys of the package's log lines.
const (
	keyPerson = "person"
	keyActor  = "actor"
	keyError  = "error"
)
