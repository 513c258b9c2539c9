package scim

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/elimity-com/scim"
	scimerr "github.com/elimity-com/scim/errors"
	"github.com/elimity-com/scim/optional"

	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/verifier/policy"
	"github.com/tpmauthn/tpmauthn/verifier/record"
)

// users is the Users resource: people of the request's IdP.
type users struct{ h *Handler }

// maxSubject bounds a subject (as oidclogin bounds the claim).
const maxSubject = 255

// scimUser reads the attributes a person is known by; subject is the one
// the IdP's scim_subject names.
func scimUser(idp *policy.IdP, attrs scim.ResourceAttributes) (record.SCIMUser, string, error) {
	var u record.SCIMUser
	u.UserName, _ = attrs["userName"].(string)
	u.ExternalID, _ = attrs["externalId"].(string)
	u.Active = true
	if a, ok := attrs["active"].(bool); ok {
		u.Active = a
	}
	subject := u.ExternalID
	if idp.SCIMSubject == policy.SCIMUserName {
		subject = u.UserName
	}
	if subject == "" || len(subject) > maxSubject {
		return u, "", scimerr.ScimErrorBadRequest(fmt.Sprintf("%s: the attribute that names the person at %s (its %s claim), 1 to %d characters",
			idp.SCIMSubject, idp.Name, idp.SubjectClaim, maxSubject))
	}
	return u, subject, nil
}

func (u *users) Create(r *http.Request, attrs scim.ResourceAttributes) (scim.Resource, error) {
	ctx, idp := r.Context(), idpOf(r)
	su, subject, err := scimUser(idp, attrs)
	if err != nil {
		return scim.Resource{}, err
	}
	if p, err := u.h.cfg.People.Person(ctx, record.PersonID(idp.Name, subject)); err == nil && p.SCIM != nil {
		return scim.Resource{}, scimerr.ScimErrorUniqueness
	}
	p, err := u.h.cfg.People.Provision(ctx, idp, subject, su)
	if err != nil {
		return scim.Resource{}, storeError(err)
	}
	if p, err = u.h.setActive(ctx, idp, p, su.Active); err != nil {
		return scim.Resource{}, err
	}
	return userResource(p), nil
}

func (u *users) Get(r *http.Request, id string) (scim.Resource, error) {
	p, err := u.h.person(r.Context(), idpOf(r), id)
	if err != nil {
		return scim.Resource{}, err
	}
	return userResource(p), nil
}

func (u *users) GetAll(r *http.Request, params scim.ListRequestParams) (scim.Page, error) {
	idp := idpOf(r)
	all, err := u.h.cfg.People.List(r.Context())
	if err != nil {
		return scim.Page{}, storeError(err)
	}
	var rs []scim.Resource
	for _, p := range all {
		if p.IdP != idp.Name || p.SCIM == nil {
			continue
		}
		res := userResource(p)
		if params.FilterValidator != nil && params.FilterValidator.PassesFilter(filterable(res)) != nil {
			continue
		}
		rs = append(rs, res)
	}
	return page(rs, params), nil
}

func (u *users) Replace(r *http.Request, id string, attrs scim.ResourceAttributes) (scim.Resource, error) {
	ctx, idp := r.Context(), idpOf(r)
	p, err := u.h.person(ctx, idp, id)
	if err != nil {
		return scim.Resource{}, err
	}
	su, subject, err := scimUser(idp, attrs)
	if err != nil {
		return scim.Resource{}, err
	}
	if subject != p.Subject {
		// Another subject is another person: never re-pointed.
		return scim.Resource{}, scimerr.ScimErrorMutability
	}
	if p, err = u.h.cfg.People.SetSCIM(ctx, p.ID, func(x *record.SCIMUser) { *x = su }); err != nil {
		return scim.Resource{}, storeError(err)
	}
	if p, err = u.h.setActive(ctx, idp, p, su.Active); err != nil {
		return scim.Resource{}, err
	}
	return userResource(p), nil
}

// Delete offboards the person and forgets their SCIM attributes; the
// record stays, disabled, so their next login is still refused (a later
// POST of the same user enables it again).
func (u *users) Delete(r *http.Request, id string) error {
	ctx, idp := r.Context(), idpOf(r)
	p, err := u.h.person(ctx, idp, id)
	if err != nil {
		return err
	}
	if _, err := u.h.cfg.Offboard.Offboard(ctx, p.ID, "deleted by "+idp.Name+" (SCIM DELETE)", actor(idp)); err != nil {
		return offboardError(err)
	}
	return storeError(u.h.cfg.People.DropSCIM(ctx, p.ID))
}

func (u *users) Patch(r *http.Request, id string, ops []scim.PatchOperation) (scim.Resource, error) {
	ctx, idp := r.Context(), idpOf(r)
	p, err := u.h.person(ctx, idp, id)
	if err != nil {
		return scim.Resource{}, err
	}
	ch, err := userChanges(ops)
	if err != nil {
		return scim.Resource{}, err
	}
	if ch.subject(idp) != "" && ch.subject(idp) != p.Subject {
		return scim.Resource{}, scimerr.ScimErrorMutability
	}
	if p, err = u.h.cfg.People.SetSCIM(ctx, p.ID, ch.apply); err != nil {
		return scim.Resource{}, storeError(err)
	}
	if ch.active != nil {
		if p, err = u.h.setActive(ctx, idp, p, *ch.active); err != nil {
			return scim.Resource{}, err
		}
	}
	return userResource(p), nil
}

// setActive offboards p (active false: every time it is said, so that a
// kick that failed is retried) or enables their record (active true).
func (h *Handler) setActive(ctx context.Context, idp *policy.IdP, p *record.Person, active bool) (*record.Person, error) {
	switch {
	case !active:
		res, err := h.cfg.Offboard.Offboard(ctx, p.ID, "deactivated by "+idp.Name+" (SCIM active=false)", actor(idp))
		if err != nil {
			return nil, offboardError(err)
		}
		return res.Person, nil
	case !p.Disabled.IsZero():
		q, err := h.cfg.People.Enable(ctx, p.ID, "activated by "+idp.Name+" (SCIM active=true); credentials stay revoked", actor(idp))
		return q, storeError(err)
	}
	return p, nil
}

// person reads the person id of idp: a person of another IdP is not found
// (the ID names its IdP, and the record is checked too).
func (h *Handler) person(ctx context.Context, idp *policy.IdP, id string) (*record.Person, error) {
	if !strings.HasPrefix(id, idp.Name+"_") {
		return nil, scimerr.ScimErrorResourceNotFound(id)
	}
	p, err := h.cfg.People.Person(ctx, id)
	if errors.Is(err, api.ErrNotFound) || (err == nil && p.IdP != idp.Name) {
		return nil, scimerr.ScimErrorResourceNotFound(id)
	}
	return p, storeError(err)
}

// userChange is what a PATCH of a User says.
type userChange struct {
	active             *bool
	userName, external *string
}

func (c userChange) subject(idp *policy.IdP) string {
	v := c.external
	if idp.SCIMSubject == policy.SCIMUserName {
		v = c.userName
	}
	if v == nil {
		return ""
	}
	return *v
}

func (c userChange) apply(u *record.SCIMUser) {
	if c.active != nil {
		u.Active = *c.active
	}
	if c.userName != nil {
		u.UserName = *c.userName
	}
	if c.external != nil {
		u.ExternalID = *c.external
	}
}

// userChanges reads the operations the verifier acts on (active,
// userName, externalId), with a path (Entra: "active") or without one
// (Okta: value {"active": false}); other attributes (name, emails) are
// not kept. Removing active is refused: only false deactivates.
func userChanges(ops []scim.PatchOperation) (userChange, error) {
	var c userChange
	set := func(name string, v any) error {
		switch name {
		case "active":
			b, ok := v.(bool)
			if !ok {
				return scimerr.ScimErrorInvalidValue
			}
			c.active = &b
		case "userName", "externalId":
			s, ok := v.(string)
			if !ok {
				return scimerr.ScimErrorInvalidValue
			}
			if name == "userName" {
				c.userName = &s
			} else {
				c.external = &s
			}
		}
		return nil
	}
	for _, op := range ops {
		switch {
		case op.Op == scim.PatchOperationRemove:
			if op.Path != nil && strings.EqualFold(op.Path.AttributePath.AttributeName, "active") {
				return c, scimerr.ScimErrorBadRequest("remove active: replace it with false to deactivate")
			}
		case op.Path == nil:
			m, ok := op.Value.(map[string]any)
			if !ok {
				return c, scimerr.ScimErrorInvalidValue
			}
			for k, v := range m {
				if err := set(k, v); err != nil {
					return c, err
				}
			}
		case op.Path.AttributePath.SubAttribute == nil && op.Path.ValueExpression == nil:
			if err := set(op.Path.AttributePath.AttributeName, op.Value); err != nil {
				return c, err
			}
		}
	}
	return c, nil
}

func userResource(p *record.Person) scim.Resource {
	attrs := scim.ResourceAttributes{"active": p.Disabled.IsZero()}
	res := scim.Resource{ID: p.ID, Attributes: attrs, Meta: scim.Meta{Created: &p.Created}}
	if p.SCIM != nil {
		attrs["userName"] = p.SCIM.UserName
		if p.SCIM.ExternalID != "" {
			res.ExternalID = optional.NewString(p.SCIM.ExternalID)
		}
		res.Meta.LastModified = &p.SCIM.Updated
	}
	if attrs["userName"] == nil || attrs["userName"] == "" {
		attrs["userName"] = p.Subject
	}
	if p.Name != "" {
		attrs["displayName"] = p.Name
	}
	return res
}

// filterable is what a filter sees of a resource.
func filterable(r scim.Resource) map[string]any {
	m := map[string]any{"id": r.ID}
	for k, v := range r.Attributes {
		m[k] = v
	}
	if r.ExternalID.Present() {
		m["externalId"] = r.ExternalID.Value()
	}
	return m
}

// page is one page of rs (RFC 7644 §3.4.2.4: startIndex from 1).
func page(rs []scim.Resource, params scim.ListRequestParams) scim.Page {
	p := scim.Page{TotalResults: len(rs), Resources: []scim.Resource{}}
	start := max(params.StartIndex, 1) - 1
	if start >= len(rs) || params.Count <= 0 {
		return p
	}
	p.Resources = rs[start:min(len(rs), start+params.Count)]
	return p
}

// storeError maps a store failure to 503 (the IdP retries), nil to nil.
func storeError(err error) error {
	var se scimerr.ScimError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &se):
		return err
	case errors.Is(err, api.ErrNotFound):
		return scimerr.ScimErrorResourceNotFound("")
	}
	return scimerr.ScimError{Status: http.StatusServiceUnavailable, Detail: "the verifier's store is unavailable: retry"}
}

// offboardError: an offboarding that could not kick everything answers
// 503, so the IdP retries (and the retry kicks again); the person is
// disabled and their credentials revoked already.
func offboardError(err error) error {
	if errors.Is(err, api.ErrUnavailable) {
		return scimerr.ScimError{Status: http.StatusServiceUnavailable, Detail: "deactivated, but some live sessions could not be kicked yet: retry"}
	}
	return storeError(err)
}
