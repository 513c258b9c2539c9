package people

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/audit"
	"github.com/tpmauthn/tpmauthn/verifier/auditlog"
	"github.com/tpmauthn/tpmauthn/verifier/policy"
	"github.com/tpmauthn/tpmauthn/verifier/record"
	"github.com/tpmauthn/tpmauthn/verifier/store"
)

// GrantTTL is how long a login grant stays redeemable: the client redeems
// it right after the login (the login itself lasts the policy's login_ttl).
const GrantTTL = 10 * time.Minute

// Config configures a Service.
type Config struct {
	Store  *store.Store
	Policy func() *policy.Policy
	Trail  *auditlog.Trail
	Logger *slog.Logger
	// Now is the clock of logins and grants (nil: time.Now).
	Now func() time.Time
	// Sealer seals the IdPs' refresh tokens in the person records (nil:
	// refresh tokens are not kept, and the periodic re-check has nothing to
	// spend).
	Sealer *Sealer
	// GroupsChanged, if set, is told when a login changed an existing
	// person's groups (the ID token lists others than the record held):
	// the offboarding step kicks the sessions whose roles it took away.
	GroupsChanged func(ctx context.Context, before, after *record.Person)
}

// Service records logins and issues and redeems login grants.
type Service struct {
	cfg Config
}

// New returns a Service.
func New(cfg Config) *Service {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Service{cfg: cfg}
}

// Identity is what an IdP vouched for at a login: Subject is the policy's
// subject claim, Name and Email are for display.
type Identity struct {
	IdP, Subject, Name, Email string
	// Issuer and SubjectClaim are the IdP's issuer and subject claim at the
	// login: with IdP and Subject, who the person is.
	Issuer, SubjectClaim string
	Groups               []string
	// RefreshToken is the IdP's refresh token of this login ("": none),
	// kept sealed for the periodic re-check.
	RefreshToken string
}

// Login records a login by id: the person is created, or updated with
// what the IdP says now (name, email, groups). A disabled person is
// refused (ErrDisabled). Either way the audit trail names the person.
func (s *Service) Login(ctx context.Context, id Identity, flow, clientAddr string) (*record.Person, error) {
	ev := audit.Deny("person.login")
	ev.Person, ev.ClientAddr, ev.Actor = record.PersonID(id.IdP, id.Subject), clientAddr, "person"
	ev.Reason = fmt.Sprintf("%s login at %s as %q", flow, id.IdP, display(id))
	p, prev, err := s.upsert(ctx, id)
	if err != nil {
		ev.Reason += ": " + err.Error()
		s.cfg.Trail.RecordNow(ctx, ev)
		return nil, err
	}
	if prev != nil && !sameGroups(prev.Groups, p.Groups) && s.cfg.GroupsChanged != nil {
		// The groups are written: what they took away is kicked whatever
		// happens to this login now (its audit fails, its browser goes).
		gctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		s.cfg.GroupsChanged(gctx, prev, p)
		cancel()
	}
	ev.Result = audit.OK
	ev.Reason += fmt.Sprintf(" (groups %q)", p.Groups)
	// A login the trail does not hold did not happen: the durable path, as
	// a NATS connect's grant.
	if err := s.cfg.Trail.RecordDurable(ctx, ev); err != nil {
		return nil, fmt.Errorf("%w: person.login of %s: %w", ErrAudit, p.ID, err)
	}
	s.cfg.Logger.Info("person logged in", keyPerson, p.ID, keyIdP, p.IdP, keyFlow, flow)
	return p, nil
}

// sameGroups compares two group lists as sets.
func sameGroups(a, b []string) bool {
	norm := func(g []string) []string { return slices.Compact(slices.Sorted(slices.Values(g))) }
	return slices.Equal(norm(a), norm(b))
}

// LoginFailed audits a login that failed before the IdP named anyone (a
// refused code exchange, an ID token that does not verify, a nonce that is
// not the login's): these are the signals of an attack on the login.
func (s *Service) LoginFailed(ctx context.Context, idp, flow, clientAddr string, cause error) {
	ev := audit.Deny("person.login")
	ev.ClientAddr, ev.Actor = clientAddr, "person"
	ev.Reason = fmt.Sprintf("%s login at %s: %v", flow, idp, cause)
	s.cfg.Trail.RecordNow(ctx, ev)
}

// display is how an audit event shows who logged in: name and email, as
// the IdP gave them (the event's text is bounded and escaped by readers).
func display(id Identity) string {
	switch {
	case id.Email != "" && id.Name != "":
		return id.Name + " <" + id.Email + ">"
	case id.Email != "":
		return id.Email
	default:
		return id.Name
	}
}

// upsert creates or refreshes the person of a login; for an existing one it
// also returns the record as it was (prev), nil for a new one.
func (s *Service) upsert(ctx context.Context, id Identity) (p, prev *record.Person, err error) {
	now := s.cfg.Now().UTC()
	key := record.PersonID(id.IdP, id.Subject)
	p = &record.Person{V: record.Version, ID: key, IdP: id.IdP, Subject: id.Subject, Issuer: id.Issuer,
		SubjectClaim: id.SubjectClaim, Created: now}
	refresh := func(p *record.Person) error {
		// Checked first: another issuer's user must not learn (nor change)
		// anything of this person, disabled or not.
		if p.Issuer != id.Issuer || p.SubjectClaim != id.SubjectClaim {
			return fmt.Errorf("%w: %s was created by issuer %q (claim %q), this login is from %q (claim %q)",
				ErrIdentity, p.ID, p.Issuer, p.SubjectClaim, id.Issuer, id.SubjectClaim)
		}
		if !p.Disabled.IsZero() {
			return fmt.Errorf("%w: %s since %s (%s)", ErrDisabled, p.ID, p.Disabled.Format(time.RFC3339), p.DisabledReason)
		}
		was := *p // as stored (the Create path resets it: nothing was)
		was.Groups = slices.Clone(p.Groups)
		prev = &was
		p.Name, p.Email, p.Groups = id.Name, id.Email, slices.Clone(id.Groups)
		if !sameGroups(was.Groups, p.Groups) {
			p.GroupsGen++
		}
		p.LastLogin, p.LastCheck = now, now
		// The token of an older login goes: the IdP's latest is the one a
		// re-check spends (and an offboarding revokes).
		p.RefreshToken = nil
		if id.RefreshToken != "" && s.cfg.Sealer != nil {
			p.RefreshToken = s.cfg.Sealer.Seal(p.ID, id.RefreshToken)
		}
		return nil
	}
	if err := refresh(p); err != nil {
		return nil, nil, err
	}
	prev = nil                                                        // the new record, not a stored one
	p.FencedGen, p.FencedGroups = p.GroupsGen, slices.Clone(p.Groups) // nothing to take away yet
	err = store.Create(ctx, s.cfg.Store.People, key, p)
	if !errors.Is(err, api.ErrConflict) {
		if err != nil {
			return nil, nil, fmt.Errorf("store person %s: %w", key, err)
		}
		return p, nil, nil
	}
	p, _, err = store.Mutate(ctx, s.cfg.Store.People, key, refresh)
	if err != nil {
		return nil, nil, fmt.Errorf("update person %s: %w", key, err)
	}
	return p, prev, nil
}

// Person reads a person record (api.ErrNotFound if there is none).
func (s *Service) Person(ctx context.Context, id string) (*record.Person, error) {
	p, _, err := store.Get[record.Person](ctx, s.cfg.Store.People, id)
	return p, err
}

// Disable disables a person: they can no longer log in, nor redeem a grant
// they hold. Revoking their credentials and kicking their sessions is the
// caller's (the offboarding step).
func (s *Service) Disable(ctx context.Context, id, reason, actor string) error {
	now := s.cfg.Now().UTC()
	_, _, err := store.Mutate(ctx, s.cfg.Store.People, id, func(p *record.Person) error {
		if p.Disabled.IsZero() {
			p.Disabled, p.DisabledReason = now, reason
		}
		return nil
	})
	ev := audit.Deny("person.disable")
	ev.Person, ev.Actor, ev.Reason = id, actor, reason
	if err == nil {
		ev.Result = audit.OK
	} else {
		ev.Result, ev.Reason = audit.Error, reason+": "+err.Error()
	}
	s.cfg.Trail.RecordNow(ctx, ev)
	return err
}

// Grant issues a login grant to p and returns it with the roles p's groups
// grant now. bound is where the client said it would redeem it (the host
// and local user whose agent registers a TPM credential, or a software
// key): only there is it redeemed.
func (s *Service) Grant(ctx context.Context, p *record.Person, flow, clientAddr string, bound *record.GrantBinding) (*api.LoginResult, error) {
	pol := s.cfg.Policy()
	if pol.People == nil {
		return nil, ErrNoPolicy
	}
	if err := CheckIdP(pol.People, p); err != nil {
		return nil, err
	}
	token, err := randomToken()
	if err != nil {
		return nil, err
	}
	now := s.cfg.Now().UTC()
	g := &record.LoginGrant{V: record.Version, Person: p.ID, Flow: flow, ClientAddr: clientAddr, Created: now,
		Expires: now.Add(GrantTTL), LoginExpires: now.Add(pol.People.LoginTTL), Bound: bound}
	// The event is stored before the grant exists: a grant is never issued
	// without it (RecordDurable, as a NATS connect's grant).
	ev := audit.Event{Kind: "person.grant", Result: audit.OK, Person: p.ID, ClientAddr: clientAddr, Actor: "person",
		Reason: fmt.Sprintf("%s login grant for %s, login until %s", flow, bound, g.LoginExpires.Format(time.RFC3339))}
	if bound != nil {
		ev.Host = bound.Host
	}
	if err := s.cfg.Trail.RecordDurable(ctx, ev); err != nil {
		return nil, fmt.Errorf("%w: person.grant of %s: %w", ErrAudit, p.ID, err)
	}
	if err := store.Create(ctx, s.cfg.Store.Logins, "grant."+record.SecretKey(token), g); err != nil {
		ev.Kind, ev.Result, ev.Reason = "person.grant.withdrawn", audit.Error, "grant not stored: "+err.Error()
		s.cfg.Trail.Record(ev)
		return nil, fmt.Errorf("store login grant: %w", err)
	}
	who := policy.Person{IdP: p.IdP, Groups: p.Groups}
	hw, sw := who, who
	hw.Assurance, sw.Assurance = policy.AssuranceHardware, policy.AssuranceSoftware
	return &api.LoginResult{
		AccessToken: token, TokenType: "Bearer", ExpiresIn: int(GrantTTL / time.Second),
		Person:        api.Person{ID: p.ID, IdP: p.IdP, Subject: p.Subject, Name: p.Name, Email: p.Email},
		Roles:         orEmpty(pol.RolesForPerson(hw)),
		SoftwareRoles: orEmpty(pol.RolesForPerson(sw)),
		LoginExpires:  g.LoginExpires,
	}, nil
}

func orEmpty(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// Redeem takes a login grant, once: the grant and its person, who must
// still be active. A grant used, expired or unknown is ErrGrantInvalid.
// at is where it is presented: a host's agent for a local user, or a
// software key. It must be where the grant was asked for (LoginGrant.Bound);
// elsewhere the grant is spent and refused (ErrGrantMisplaced; a grant
// bound nowhere, ErrGrantUnbound), and the attempt audited.
func (s *Service) Redeem(ctx context.Context, token string, at *record.GrantBinding) (*record.LoginGrant, *record.Person, error) {
	key := "grant." + record.SecretKey(token)
	g, rev, err := store.Get[record.LoginGrant](ctx, s.cfg.Store.Logins, key)
	if errors.Is(err, api.ErrNotFound) {
		return nil, nil, ErrGrantInvalid
	}
	if err != nil {
		return nil, nil, err
	}
	if err := store.Take(ctx, s.cfg.Store.Logins, key, rev); err != nil {
		if errors.Is(err, api.ErrConflict) {
			return nil, nil, ErrGrantInvalid
		}
		return nil, nil, err
	}
	// Where before when: a leaked grant tried late is still worth telling.
	if err := s.checkPlace(g, at); err != nil {
		return nil, nil, err
	}
	if !s.cfg.Now().Before(g.Expires) {
		return nil, nil, fmt.Errorf("%w: expired at %s", ErrGrantInvalid, g.Expires.Format(time.RFC3339))
	}
	p, err := s.Person(ctx, g.Person)
	if err != nil {
		return nil, nil, err
	}
	if !p.Disabled.IsZero() {
		return nil, nil, fmt.Errorf("%w: %s", ErrDisabled, p.ID)
	}
	if err := CheckIdP(s.cfg.Policy().People, p); err != nil {
		return nil, nil, err
	}
	if err := s.cfg.Trail.RecordDurable(ctx, audit.Event{Kind: "person.grant.redeem", Result: audit.OK, Person: p.ID, Actor: "person",
		Reason: fmt.Sprintf("%s login grant redeemed", g.Flow)}); err != nil {
		return nil, nil, fmt.Errorf("%w: person.grant.redeem of %s: %w", ErrAudit, p.ID, err)
	}
	return g, p, nil
}

// checkPlace refuses a grant presented elsewhere than where it was asked
// for, or one bound nowhere, and audits it. What it was bound to stays in
// the trail and the log: the presenter is not told where it would work.
func (s *Service) checkPlace(g *record.LoginGrant, at *record.GrantBinding) error {
	if g.Bound != nil && at != nil && *g.Bound == *at {
		return nil
	}
	ev := audit.Deny("person.grant.redeem")
	ev.Person, ev.Actor = g.Person, "person"
	if at != nil {
		ev.Host = at.Host
	}
	if g.Bound == nil {
		ev.Reason = fmt.Sprintf("%s login grant bound nowhere (an earlier client's login) presented at %s: spent, refused", g.Flow, at)
		s.cfg.Trail.Record(ev)
		return ErrGrantUnbound
	}
	ev.Reason = fmt.Sprintf("%s login grant for %s presented at %s: spent, refused (a leaked grant?)", g.Flow, g.Bound, at)
	s.cfg.Trail.Record(ev)
	s.cfg.Logger.Warn("a login grant was presented elsewhere than where it was asked for; spent and refused",
		"person", g.Person, "bound", g.Bound.String(), "presented", at.String())
	return ErrGrantMisplaced
}

// CheckIdP is nil if p's IdP is in pp with the issuer and subject claim p
// was created with: an IdP removed from the policy (say, compromised), or
// its name given to another issuer, takes its people's grants with it.
func CheckIdP(pp *policy.People, p *record.Person) error {
	idp := pp.IdP(p.IdP)
	switch {
	case idp == nil:
		return fmt.Errorf("%w: %s: IdP %q is not in the policy", ErrIdentity, p.ID, p.IdP)
	case idp.Issuer != p.Issuer || idp.SubjectClaim != p.SubjectClaim:
		return fmt.Errorf("%w: %s was created by issuer %q (claim %q); IdP %q is now %q (claim %q)",
			ErrIdentity, p.ID, p.Issuer, p.SubjectClaim, p.IdP, idp.Issuer, idp.SubjectClaim)
	}
	return nil
}

// randomToken is 32 random bytes, base64url: a bearer secret.
func randomToken() (string, error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	return base64.RawURLEncoding.EncodeToString(b[:]), nil
}

// Attribute keys of the package's log lines.
const (
	keyPerson = "person"
	keyIdP    = "idp"
	keyFlow   = "flow"
)
