package scim

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"net/http"
	"slices"
	"strings"

	"github.com/elimity-com/scim"
	scimerr "github.com/elimity-com/scim/errors"
	"github.com/elimity-com/scim/optional"
	filter "github.com/scim2/filter-parser/v2"

	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/verifier/policy"
	"github.com/tpmauthn/tpmauthn/verifier/record"
	"github.com/tpmauthn/tpmauthn/verifier/store"
)

// groups is the Groups resource: a group is a name in its members' groups.
type groups struct{ h *Handler }

// groupName is the name g stands for in its members' groups.
func groupName(idp *policy.IdP, display, external string) string {
	if idp.SCIMGroupName == policy.SCIMExternalID {
		return external
	}
	return display
}

func (g *groups) Create(r *http.Request, attrs scim.ResourceAttributes) (scim.Resource, error) {
	ctx, idp := r.Context(), idpOf(r)
	display, _ := attrs["displayName"].(string)
	external, _ := attrs["externalId"].(string)
	name := groupName(idp, display, external)
	if name == "" || len(name) > 128 {
		return scim.Resource{}, scimerr.ScimErrorBadRequest(idp.SCIMGroupName + ": the group's name in the groups claim, 1 to 128 characters")
	}
	var b [16]byte
	_, _ = rand.Read(b[:])
	now := g.h.cfg.Now().UTC()
	rec := &record.SCIMGroup{V: record.Version, ID: hex.EncodeToString(b[:]), IdP: idp.Name, Name: name, Display: display,
		ExternalID: external, Created: now, Updated: now}
	if err := store.Create(ctx, g.h.cfg.Store.People, record.SCIMGroupKey(idp.Name, rec.ID), rec); err != nil {
		return scim.Resource{}, storeError(err)
	}
	members, err := memberList(attrs["members"])
	if err != nil {
		return scim.Resource{}, err
	}
	rec, err = g.h.changeGroup(ctx, idp, rec.ID, groupChange{set: members, setMembers: true})
	if err != nil {
		return scim.Resource{}, err
	}
	return groupResource(rec), nil
}

func (g *groups) Get(r *http.Request, id string) (scim.Resource, error) {
	rec, err := g.h.group(r.Context(), idpOf(r), id)
	if err != nil {
		return scim.Resource{}, err
	}
	return groupResource(rec), nil
}

func (g *groups) GetAll(r *http.Request, params scim.ListRequestParams) (scim.Page, error) {
	ctx, idp := r.Context(), idpOf(r)
	keys, err := store.Keys(ctx, g.h.cfg.Store.People)
	if err != nil {
		return scim.Page{}, storeError(err)
	}
	var rs []scim.Resource
	prefix := record.SCIMGroupKey(idp.Name, "")
	for _, key := range keys {
		id, ok := strings.CutPrefix(key, prefix)
		if !ok {
			continue
		}
		rec, err := g.h.group(ctx, idp, id)
		if err != nil {
			continue // deleted meanwhile
		}
		res := groupResource(rec)
		if params.FilterValidator != nil && params.FilterValidator.PassesFilter(filterable(res)) != nil {
			continue
		}
		rs = append(rs, res)
	}
	return page(rs, params), nil
}

func (g *groups) Replace(r *http.Request, id string, attrs scim.ResourceAttributes) (scim.Resource, error) {
	ctx, idp := r.Context(), idpOf(r)
	display, _ := attrs["displayName"].(string)
	external, _ := attrs["externalId"].(string)
	members, err := memberList(attrs["members"])
	if err != nil {
		return scim.Resource{}, err
	}
	rec, err := g.h.changeGroup(ctx, idp, id, groupChange{display: &display, external: &external, set: members, setMembers: true})
	if err != nil {
		return scim.Resource{}, err
	}
	return groupResource(rec), nil
}

func (g *groups) Delete(r *http.Request, id string) error {
	ctx, idp := r.Context(), idpOf(r)
	if _, err := g.h.changeGroup(ctx, idp, id, groupChange{setMembers: true}); err != nil {
		return err
	}
	key := record.SCIMGroupKey(idp.Name, id)
	if err := g.h.cfg.Store.People.Delete(ctx, key); err != nil {
		return storeError(err)
	}
	return nil
}

func (g *groups) Patch(r *http.Request, id string, ops []scim.PatchOperation) (scim.Resource, error) {
	ctx, idp := r.Context(), idpOf(r)
	ch, err := groupChanges(ops)
	if err != nil {
		return scim.Resource{}, err
	}
	rec, err := g.h.changeGroup(ctx, idp, id, ch)
	if err != nil {
		return scim.Resource{}, err
	}
	return groupResource(rec), nil
}

// group reads idp's group id.
func (h *Handler) group(ctx context.Context, idp *policy.IdP, id string) (*record.SCIMGroup, error) {
	if id == "" || strings.ContainsAny(id, ".*> ") {
		return nil, scimerr.ScimErrorResourceNotFound(id)
	}
	rec, _, err := store.Get[record.SCIMGroup](ctx, h.cfg.Store.People, record.SCIMGroupKey(idp.Name, id))
	if errors.Is(err, api.ErrNotFound) || (err == nil && rec.IdP != idp.Name) {
		return nil, scimerr.ScimErrorResourceNotFound(id)
	}
	return rec, storeError(err)
}

// groupChange is what a request changes of a group.
type groupChange struct {
	display, external *string
	// set (with setMembers) replaces the members; add and remove change
	// them; removeAll empties them.
	set, add, remove []string
	setMembers       bool
}

// changeGroup applies ch to idp's group id, then moves the group's name in
// and out of the members' groups (those who left, those who joined, all
// of them if the name changed), each kicked if their roles shrank.
func (h *Handler) changeGroup(ctx context.Context, idp *policy.IdP, id string, ch groupChange) (*record.SCIMGroup, error) {
	if _, err := h.group(ctx, idp, id); err != nil {
		return nil, err
	}
	var before record.SCIMGroup
	rec, _, err := store.Mutate(ctx, h.cfg.Store.People, record.SCIMGroupKey(idp.Name, id), func(g *record.SCIMGroup) error {
		before = *g
		before.Members = slices.Clone(g.Members)
		if ch.display != nil {
			g.Display = *ch.display
		}
		if ch.external != nil {
			g.ExternalID = *ch.external
		}
		name := groupName(idp, g.Display, g.ExternalID)
		if name == "" || len(name) > 128 {
			return scimerr.ScimErrorBadRequest(idp.SCIMGroupName + ": the group's name in the groups claim, 1 to 128 characters")
		}
		g.Name = name
		if ch.setMembers {
			g.Members = slices.Clone(ch.set)
		}
		g.Members = append(g.Members, ch.add...)
		g.Members = slices.DeleteFunc(g.Members, func(m string) bool { return slices.Contains(ch.remove, m) })
		g.Members = slices.Compact(slices.Sorted(slices.Values(g.Members)))
		g.Updated = h.cfg.Now().UTC()
		return nil
	})
	if err != nil {
		return nil, storeError(err)
	}
	var errs []error
	for _, m := range slices.Compact(slices.Sorted(slices.Values(append(slices.Clone(before.Members), rec.Members...)))) {
		was, is := slices.Contains(before.Members, m), slices.Contains(rec.Members, m)
		if was == is && (before.Name == rec.Name || !is) {
			continue
		}
		if !h.ownPerson(ctx, idp, m) {
			continue // not (yet) a person here: their login brings the groups claim
		}
		change := func(gs []string) []string {
			gs = slices.DeleteFunc(gs, func(x string) bool { return x == before.Name && was })
			if is {
				gs = append(gs, rec.Name)
			}
			return gs
		}
		if _, err := h.cfg.Offboard.Regroup(ctx, m, change, actor(idp)); err != nil {
			h.cfg.Logger.Warn("group change not applied", keyIdP, idp.Name, keyPerson, m, keyError, err)
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return nil, offboardError(errors.Join(errs...))
	}
	return rec, nil
}

// ownPerson reports whether id is a person of idp.
func (h *Handler) ownPerson(ctx context.Context, idp *policy.IdP, id string) bool {
	_, err := h.person(ctx, idp, id)
	return err == nil
}

// memberList reads a members value: [{"value": "<user id>"}, …].
func memberList(v any) ([]string, error) {
	if v == nil {
		return nil, nil
	}
	list, ok := v.([]any)
	if !ok {
		list = []any{v}
	}
	out := make([]string, 0, len(list))
	for _, e := range list {
		m, ok := e.(map[string]any)
		if !ok {
			return nil, scimerr.ScimErrorInvalidValue
		}
		s, ok := m["value"].(string)
		if !ok || s == "" {
			return nil, scimerr.ScimErrorInvalidValue
		}
		out = append(out, s)
	}
	return out, nil
}

// groupChanges reads a group PATCH: displayName and externalId replaced,
// members added, removed (a value list; the filtered path
// members[value eq "<id>"], also or-ed; all of them without either) or
// replaced.
func groupChanges(ops []scim.PatchOperation) (groupChange, error) {
	var ch groupChange
	for _, op := range ops {
		attr := ""
		if op.Path != nil {
			attr = op.Path.AttributePath.AttributeName
			if op.Path.AttributePath.SubAttribute != nil || op.Path.SubAttribute != nil {
				return ch, scimerr.ScimErrorBadRequest("unsupported path " + op.Path.String())
			}
		}
		var err error
		switch {
		case op.Path == nil:
			err = ch.whole(op)
		case strings.EqualFold(attr, "members"):
			err = ch.members(op)
		case strings.EqualFold(attr, "displayName") || strings.EqualFold(attr, "externalId"):
			s, ok := op.Value.(string)
			if !ok || op.Op == scim.PatchOperationRemove {
				return ch, scimerr.ScimErrorInvalidValue
			}
			if strings.EqualFold(attr, "displayName") {
				ch.display = &s
			} else {
				ch.external = &s
			}
		}
		if err != nil {
			return ch, err
		}
	}
	return ch, nil
}

// whole is an operation without a path: value {displayName, members, …}.
func (ch *groupChange) whole(op scim.PatchOperation) error {
	m, ok := op.Value.(map[string]any)
	if !ok || op.Op == scim.PatchOperationRemove {
		return scimerr.ScimErrorInvalidValue
	}
	for k, v := range m {
		switch {
		case strings.EqualFold(k, "displayName"), strings.EqualFold(k, "externalId"):
			s, ok := v.(string)
			if !ok {
				return scimerr.ScimErrorInvalidValue
			}
			if strings.EqualFold(k, "displayName") {
				ch.display = &s
			} else {
				ch.external = &s
			}
		case strings.EqualFold(k, "members"):
			if err := ch.members(scim.PatchOperation{Op: op.Op, Value: v}); err != nil {
				return err
			}
		}
	}
	return nil
}

// members applies an operation on the members attribute.
func (ch *groupChange) members(op scim.PatchOperation) error {
	if op.Path != nil && op.Path.ValueExpression != nil {
		if op.Op != scim.PatchOperationRemove {
			return scimerr.ScimErrorBadRequest("a members filter only with remove")
		}
		ids, err := memberFilter(op.Path.ValueExpression)
		if err != nil {
			return err
		}
		ch.remove = append(ch.remove, ids...)
		return nil
	}
	list, err := memberList(op.Value)
	if err != nil {
		return err
	}
	switch op.Op {
	case scim.PatchOperationAdd:
		ch.add = append(ch.add, list...)
	case scim.PatchOperationReplace:
		ch.set, ch.setMembers, ch.add, ch.remove = list, true, nil, nil
	case scim.PatchOperationRemove:
		if op.Value == nil {
			ch.set, ch.setMembers, ch.add = nil, true, nil
			return nil
		}
		ch.remove = append(ch.remove, list...)
	}
	return nil
}

// memberFilter reads members[value eq "a"] (or value eq "a" or value eq
// "b"): any other filter is refused rather than ignored, since ignoring it
// would answer 200 and leave the member in.
func memberFilter(e filter.Expression) ([]string, error) {
	switch x := e.(type) {
	case *filter.AttributeExpression:
		s, ok := x.CompareValue.(string)
		if !strings.EqualFold(x.AttributePath.AttributeName, "value") || x.AttributePath.SubAttribute != nil ||
			x.Operator != filter.EQ || !ok || s == "" {
			return nil, scimerr.ScimErrorBadRequest("members filter: only value eq \"<id>\" (or several, or-ed)")
		}
		return []string{s}, nil
	case *filter.LogicalExpression:
		if x.Operator != filter.OR {
			return nil, scimerr.ScimErrorBadRequest("members filter: only or")
		}
		l, err := memberFilter(x.Left)
		if err != nil {
			return nil, err
		}
		r, err := memberFilter(x.Right)
		return append(l, r...), err
	}
	return nil, scimerr.ScimErrorBadRequest("members filter: only value eq \"<id>\"")
}

func groupResource(g *record.SCIMGroup) scim.Resource {
	members := make([]any, len(g.Members))
	for i, m := range g.Members {
		members[i] = map[string]any{"value": m}
	}
	res := scim.Resource{ID: g.ID, Attributes: scim.ResourceAttributes{"displayName": g.Display, "members": members},
		Meta: scim.Meta{Created: &g.Created, LastModified: &g.Updated}}
	if g.ExternalID != "" {
		res.ExternalID = optional.NewString(g.ExternalID)
	}
	return res
}
