package admin

import (
	"context"
	"fmt"

	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/verifier/natsapi"
	"github.com/tpmauthn/tpmauthn/verifier/offboard"
	"github.com/tpmauthn/tpmauthn/verifier/operators"
	"github.com/tpmauthn/tpmauthn/verifier/record"
)

// People are the person records the operator API lists and changes.
type personStore interface {
	List(ctx context.Context) ([]*record.Person, error)
	Person(ctx context.Context, id string) (*record.Person, error)
	Enable(ctx context.Context, id, reason, actor string) (*record.Person, error)
}

type offboarder interface {
	Offboard(ctx context.Context, id, reason, actor string) (*offboard.Result, error)
}

// personEndpoints: person.list, person.show, person.disable (an operator's
// offboarding: record disabled, credentials revoked, sessions kicked,
// refresh token revoked) and person.enable (the record only: revoked
// credentials stay revoked).
func (s *Service) personEndpoints() []natsapi.Endpoint {
	return []natsapi.Endpoint{
		{Subject: api.SubjectAdminPrefix + "person.list", Handler: s.personList},
		{Subject: api.SubjectAdminPrefix + "person.show", Handler: s.personShow},
		{Subject: api.SubjectAdminPrefix + "person.disable", Handler: s.personDisable},
		{Subject: api.SubjectAdminPrefix + "person.enable", Handler: s.personEnable},
	}
}

func (s *Service) peopleOrErr() error {
	if s.cfg.People == nil || s.cfg.Offboard == nil {
		return fmt.Errorf("%w: this verifier keeps no people", api.ErrUnavailable)
	}
	return nil
}

// shown is p without its sealed refresh token: an operator has no use for
// it, and it never leaves the verifier.
func shown(p *record.Person) *record.Person {
	if p == nil {
		return nil
	}
	c := *p
	c.RefreshToken = nil
	return &c
}

func (s *Service) personList(ctx context.Context, _ []byte) (any, error) {
	if err := s.peopleOrErr(); err != nil {
		return nil, err
	}
	all, err := s.cfg.People.List(ctx)
	if err != nil {
		return nil, err
	}
	for i, p := range all {
		all[i] = shown(p)
	}
	return all, nil
}

func (s *Service) personShow(ctx context.Context, body []byte) (any, error) {
	req, err := s.personRequest(body)
	if err != nil {
		return nil, err
	}
	p, err := s.cfg.People.Person(ctx, req.ID)
	return shown(p), err
}

func (s *Service) personDisable(ctx context.Context, body []byte) (any, error) {
	req, err := s.personRequest(body)
	if err != nil {
		return nil, err
	}
	if _, err := s.cfg.People.Person(ctx, req.ID); err != nil {
		return nil, err
	}
	reason := req.Reason
	if reason == "" {
		reason = "disabled by an operator"
	}
	res, err := s.cfg.Offboard.Offboard(ctx, req.ID, reason, operators.ActorOf(ctx).Name)
	if res != nil {
		res.Person = shown(res.Person)
	}
	if err != nil {
		return nil, err
	}
	return res, nil
}

func (s *Service) personEnable(ctx context.Context, body []byte) (any, error) {
	req, err := s.personRequest(body)
	if err != nil {
		return nil, err
	}
	reason := req.Reason
	if reason == "" {
		reason = "enabled by an operator"
	}
	p, err := s.cfg.People.Enable(ctx, req.ID, reason+"; credentials stay revoked", operators.ActorOf(ctx).Name)
	return shown(p), err
}

func (s *Service) personRequest(body []byte) (*api.IDRequest, error) {
	if err := s.peopleOrErr(); err != nil {
		return nil, err
	}
	var req api.IDRequest
	if err := natsapi.Decode(body, &req); err != nil {
		return nil, err
	}
	if req.ID == "" {
		return nil, fmt.Errorf("%w: id: a person's ID (tpmauthnctl person list)", api.ErrBadRequest)
	}
	return &req, nil
}
