package offboard

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"

	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/audit"
	"github.com/tpmauthn/tpmauthn/verifier/policy"
	"github.com/tpmauthn/tpmauthn/verifier/record"
)

// Regroup sets person id's groups to change(their groups now): what their
// IdP lists now (a re-check), or a SCIM group's members changed. Each
// credential of theirs whose roles lose one under the new groups has its
// live sessions kicked (it reconnects with the smaller set). It returns
// the sessions kicked. An unchanged list changes nothing.
func (s *Service) Regroup(ctx context.Context, id string, change func(groups []string) []string, actor string) (int, error) {
	before, after, err := s.cfg.People.UpdateGroups(ctx, id, change)
	if err != nil {
		return 0, fmt.Errorf("regroup %s: %w", id, err)
	}
	if slices.Equal(before.Groups, after.Groups) {
		return 0, nil
	}
	pol := s.cfg.Policy()
	var mu sync.Mutex
	lost := map[string][]string{} // credential → roles it loses (cut calls shrunk concurrently)
	shrunk := func(c *record.Credential) bool {
		// As the connect path reads it (verifier/authn/person): an
		// assurance the record does not state counts as the weakest.
		a := c.Assurance
		if a != policy.AssuranceHardware {
			a = policy.AssuranceSoftware
		}
		was := pol.RolesForPerson(policy.Person{IdP: before.IdP, Groups: before.Groups, Assurance: a})
		now := pol.RolesForPerson(policy.Person{IdP: after.IdP, Groups: after.Groups, Assurance: a})
		gone := slices.DeleteFunc(slices.Clone(was), func(r string) bool { return slices.Contains(now, r) })
		if len(gone) == 0 || c.Status == api.CredentialRevoked {
			return false
		}
		mu.Lock()
		lost[c.ID] = gone
		mu.Unlock()
		return true
	}
	_, kicked, kickErr := s.cut(ctx, after.Credentials, func(c *record.Credential) action {
		if shrunk(c) {
			return kickOnly
		}
		return leave
	}, "", actor)
	ev := audit.Event{Kind: "person.groups", Result: audit.OK, Person: id, Actor: actor,
		Reason: fmt.Sprintf("groups %q → %q; %d sessions kicked", before.Groups, after.Groups, kicked)}
	for _, c := range slices.Sorted(maps.Keys(lost)) {
		ev.Reason += fmt.Sprintf("; credential %s loses %s", c, strings.Join(lost[c], ","))
	}
	if kickErr != nil {
		ev.Result, ev.Reason = audit.Error, ev.Reason+"; "+kickErr.Error()
	}
	s.cfg.Trail.RecordNow(ctx, ev)
	if kickErr != nil {
		return kicked, fmt.Errorf("%w: person %s: sessions whose roles shrank not all kicked (they end at their expiry): %w", api.ErrUnavailable, id, kickErr)
	}
	return kicked, nil
}
