package register

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/attestation"
	"github.com/tpmauthn/tpmauthn/audit"
	"github.com/tpmauthn/tpmauthn/verifier/natsapi"
	"github.com/tpmauthn/tpmauthn/verifier/people"
	"github.com/tpmauthn/tpmauthn/verifier/policy"
	"github.com/tpmauthn/tpmauthn/verifier/record"
	"github.com/tpmauthn/tpmauthn/verifier/store"
)

// persons is the people service as registration uses it: a login grant is
// redeemed once, for the person it names, where it was asked for.
type persons interface {
	Redeem(ctx context.Context, token string, at *record.GrantBinding) (*record.LoginGrant, *record.Person, error)
	AddCredential(ctx context.Context, cred *record.Credential) (replaced []string, err error)
}

// beginPerson starts a person's device credential registration: the agent
// of an active host (its own session, not a join token's) hands over a
// login grant a local user gave it. The grant is redeemed here, once: a
// registration that does not finish needs a new login.
func (s *Service) beginPerson(ctx context.Context, req *api.RegisterBeginRequest) (*record.Challenge, error) {
	if s.cfg.People == nil {
		return nil, fmt.Errorf("%w: this verifier has no people (no people: section in its policy)", api.ErrBadRequest)
	}
	if req.Workload != api.PersonWorkload || req.RotateFrom != "" {
		return nil, fmt.Errorf("%w: a person's registration names workload %q and rotates from nothing", api.ErrBadRequest, api.PersonWorkload)
	}
	if !natsapi.CallerIsHost(ctx, req.HostID) {
		return nil, fmt.Errorf("%w: only host %s's agent may register a person's credential on it", api.ErrNotFound, req.HostID)
	}
	if _, err := s.cfg.Fleet.ActiveHost(ctx, req.HostID); err != nil {
		return nil, err
	}
	// The host is the session's own (checked above), the uid the one the
	// host's agent read off the caller's socket.
	g, p, err := s.cfg.People.Redeem(ctx, req.Person.Grant, &record.GrantBinding{Host: req.HostID, UID: req.Person.UID})
	if err != nil {
		return nil, loginErr(err)
	}
	return &record.Challenge{Person: p.ID, LoginExpires: g.LoginExpires, UID: req.Person.UID, User: req.Person.User}, nil
}

// loginErr maps the people service's refusals to the API's.
func loginErr(err error) error {
	switch {
	case errors.Is(err, people.ErrGrantInvalid), errors.Is(err, people.ErrDisabled), errors.Is(err, people.ErrIdentity):
		return fmt.Errorf("%w: %w", api.ErrLoginInvalid, err)
	case errors.Is(err, people.ErrAudit):
		return fmt.Errorf("%w: %w", api.ErrUnavailable, err)
	}
	return err
}

// finishPerson stores a person's verified device credential: bound to the
// person and to the host's local user, expiring with the login, listed in
// the person's record (so that offboarding finds it), and replacing the
// person's earlier credentials on this host (they retire after the grace
// period, as a rotated workload credential).
func (s *Service) finishPerson(ctx context.Context, ch *record.Challenge, h *record.Host, reg *attestation.Registration, ev *audit.Event) (*api.RegisterFinishResponse, error) {
	ev.Person = ch.Person
	now := time.Now().UTC()
	if !now.Before(ch.LoginExpires) {
		return nil, fmt.Errorf("%w: the login ended at %s", api.ErrLoginInvalid, ch.LoginExpires.Format(time.RFC3339))
	}
	p, _, err := store.Get[record.Person](ctx, s.cfg.Fleet.Store.People, ch.Person)
	if err != nil {
		return nil, err
	}
	cred := &record.Credential{
		V: record.Version, ID: b64(reg.CredentialID), Host: h.ID, Workload: PersonName(p),
		PublicKey: reg.PublicKey, UserHandle: ch.UserHandle, Counter: reg.Counter,
		Status: api.CredentialActive, Created: now, Updated: now,
		Person: p.ID, Expires: ch.LoginExpires, Assurance: policy.AssuranceHardware,
		LocalUser: localUser(ch.UID, ch.User),
	}
	ev.Workload = cred.Workload
	replaced, err := s.cfg.People.AddCredential(ctx, cred)
	if err != nil {
		return nil, loginErr(err)
	}
	s.cfg.Fleet.CredentialCreated(cred.ID)
	for _, old := range replaced {
		if _, err := s.retire(ctx, old, cred.ID); err != nil {
			s.log.Warn("a person's earlier credential on this host was not retired (it expires with its login)", "credential", old, "error", err)
		}
	}
	ev.Result = audit.OK
	ev.Reason = fmt.Sprintf("person's device credential for local user %s, until %s", cred.LocalUser, cred.Expires.Format(time.RFC3339))
	s.log.Info("person's credential registered", "credential", cred.ID, "host", h.ID, "person", p.ID, "local_user", cred.LocalUser)
	return &api.RegisterFinishResponse{CredentialID: cred.ID, Workload: cred.Workload, Expires: cred.Expires,
		Person: &api.Person{ID: p.ID, IdP: p.IdP, Subject: p.Subject, Name: p.Name, Email: p.Email}}, nil
}

// PersonName is what a person's device credentials are called: "person:"
// and a token of their email's local part (or name, or ID), lower case,
// [a-z0-9_-] only. It is a label (in the NATS user name person:NAME@HOST,
// tags and listings): the person is the credential's Person, and
// {{workload}} in a role cannot widen a subject with it.
func PersonName(p *record.Person) string {
	src, _, _ := strings.Cut(p.Email, "@")
	if src == "" {
		src = p.Name
	}
	var b strings.Builder
	for _, r := range strings.ToLower(src) {
		switch {
		case b.Len() >= 40:
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9', r == '_', r == '-':
			b.WriteRune(r)
		case r == '.' || r == ' ':
			b.WriteByte('-')
		}
	}
	name := strings.Trim(b.String(), "-")
	if name == "" {
		name = p.ID
	}
	return "person:" + name
}

func localUser(uid uint32, user string) string {
	if user == "" {
		return "uid " + strconv.FormatUint(uint64(uid), 10)
	}
	return user + " (uid " + strconv.FormatUint(uint64(uid), 10) + ")"
}

// PersonLogout revokes a person's credential on the host whose agent asks
// (the person logged out there): its live sessions are kicked by every
// instance's revocation watch. Only that host's agent may, and only for a
// person's credential of that host; revoking one already revoked is done.
func (s *Service) PersonLogout(ctx context.Context, body []byte) (any, error) {
	var req api.PersonLogoutRequest
	if err := natsapi.Decode(body, &req); err != nil {
		return nil, err
	}
	notFound := fmt.Errorf("%w: no person's credential %s on host %s", api.ErrNotFound, req.CredentialID, req.HostID)
	if !natsapi.CallerIsHost(ctx, req.HostID) {
		return nil, notFound
	}
	c, err := s.cfg.Fleet.SetCredentialStatus(ctx, req.CredentialID, api.CredentialRevoked, "the person logged out on host "+req.HostID,
		func(c *record.Credential) error {
			if c.Person == "" || c.Host != req.HostID {
				return notFound
			}
			return nil
		})
	switch {
	case errors.Is(err, record.ErrTransition):
		return struct{}{}, nil // revoked already
	case errors.Is(err, api.ErrNotFound):
		return nil, notFound
	case err != nil:
		return nil, err
	}
	s.cfg.Trail.RecordNow(ctx, audit.Event{Kind: "person.logout", Result: audit.OK, Host: c.Host, Workload: c.Workload,
		Credential: c.ID, Person: c.Person, Reason: "logged out on the host: credential revoked"})
	return struct{}{}, nil
}
