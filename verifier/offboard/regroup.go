package offboard

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/audit"
	"github.com/tpmauthn/tpmauthn/verifier/policy"
	"github.com/tpmauthn/tpmauthn/verifier/record"
	"github.com/tpmauthn/tpmauthn/verifier/sessions"
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
	return s.Regrouped(ctx, before, after, actor)
}

// Regrouped kicks what a change of a person's groups, from before to after
// (written already: a regroup, or a login whose ID token listed others),
// took away; see Regroup.
//
// What is taken away is counted from before's groups when the change that
// made them is finished (its fences and kicks done: after.FencedGen has
// reached before.GroupsGen). Otherwise a session may hold roles of any
// group list since the last finished change, which no record keeps (a
// change that added a group and is still kicking, or died, then one that
// takes it away): every session of the person's credentials is kicked and
// fenced, and reconnects with what after gives. The sweep (FinishFences)
// finishes a change the same way.
func (s *Service) Regrouped(ctx context.Context, before, after *record.Person, actor string) (int, error) {
	return s.regrouped(ctx, before, after, actor, true)
}

// regrouped is Regrouped; retry says whether failed kicks are retried in
// the background (not from the sweep, which comes back each minute).
func (s *Service) regrouped(ctx context.Context, before, after *record.Person, actor string, retry bool) (int, error) {
	id := after.ID
	unfinished := after.FencedGen < before.GroupsGen
	if !unfinished && slices.Equal(before.Groups, after.Groups) {
		return 0, s.fenced(ctx, after)
	}
	pol, prev := s.cfg.Policy(), s.replacedPolicy(time.Now())
	shrunk := func(c *record.Credential) []string {
		had := personRoles(pol, before, c)
		if prev != nil {
			// A session granted with the policy a reload replaced, whose
			// own kick (Repolicy) reads the groups this change writes.
			had = append(had, personRoles(prev, before, c)...)
		}
		lost := rolesLost(had, personRoles(pol, after, c))
		if unfinished && len(lost) == 0 {
			lost = []string{unfinishedLoss}
		}
		return lost
	}
	lost, kicked, failed, kickErr := s.kickShrunk(ctx, after.Credentials, shrunk, after.GroupsGen, actor)
	if len(failed) > 0 {
		// The groups are written: a regroup asked again sees no change,
		// so the fence and the kick are retried here (and, should this
		// process die first, by the sweep: FinishFences).
		if retry {
			s.retryKick(after, failed, shrunk, actor, KickRetry)
		}
	} else if err := s.fenced(ctx, after); err != nil {
		s.cfg.Logger.Warn("a regroup's kicks are done but not recorded as done; the sweep does them again", "person", id, "error", err)
	}
	ev := audit.Event{Kind: "person.groups", Result: audit.OK, Person: id, Actor: actor,
		Reason: fmt.Sprintf("groups %q → %q; %d sessions kicked", before.Groups, after.Groups, kicked) + lostReason(lost)}
	if kickErr != nil {
		ev.Result, ev.Reason = audit.Error, ev.Reason+"; "+kickErr.Error()
	}
	s.cfg.Trail.RecordNow(ctx, ev)
	if kickErr != nil {
		return kicked, fmt.Errorf("%w: person %s: sessions whose roles shrank not all kicked (they end at their expiry): %w", api.ErrUnavailable, id, kickErr)
	}
	return kicked, nil
}

// PolicyReplaced tells the Service that a reload replaced prev at now
// (call it when the policy is swapped, before the reload's own kick). For
// as long as a session granted with prev may last, a regroup counts the
// roles prev gave too: the reload's kick (Repolicy) compares the two
// policies over the person's groups when it runs, and a regroup between
// the swap and then compares the two group lists under the new policy
// alone, so a role both take away (a group and its binding retired
// together) was kicked by neither (found by review).
func (s *Service) PolicyReplaced(prev *policy.Policy, now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.prev, s.prevUntil = prev, now.Add(prev.SessionTTL+time.Minute)
}

// replacedPolicy is the policy a reload replaced while its sessions may
// still be live, or nil.
func (s *Service) replacedPolicy(now time.Time) *policy.Policy {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.prev == nil || now.After(s.prevUntil) {
		return nil
	}
	return s.prev
}

// unfinishedLoss stands, in audit events, for the roles of a change left
// unfinished, which a kick of every session covers.
const unfinishedLoss = "(any role of an unfinished earlier change of groups)"

// fenced records that after's change has all its fences and kicks done.
func (s *Service) fenced(ctx context.Context, after *record.Person) error {
	if after.FencedGen >= after.GroupsGen {
		return nil
	}
	return s.cfg.People.Fenced(ctx, after.ID, after.GroupsGen, after.Groups)
}

// FenceGrace is how long a person's change stays unfinished before the
// sweep finishes it: longer than a regroup's own retries (about two
// minutes), so that the sweep does not kick what a regroup under way is
// about to.
var FenceGrace = 3 * time.Minute

// FinishFences finishes the regroups left unfinished (Person.FencedGen
// below GroupsGen) for FenceGrace or more, as seen by this instance's
// earlier calls: a verifier died between a change's write and its kicks,
// or its retries ran out. The verifier calls it every minute. It returns
// the sessions kicked.
func (s *Service) FinishFences(ctx context.Context, now time.Time) (int, error) {
	all, err := s.cfg.People.List(ctx)
	if err != nil {
		return 0, fmt.Errorf("fence sweep: %w", err)
	}
	s.pendingMu.Lock()
	due := []*record.Person{}
	seen := map[string]pendingFence{}
	for _, p := range all {
		if p.FencedGen >= p.GroupsGen || !p.Disabled.IsZero() {
			continue
		}
		was, ok := s.pending[p.ID]
		if !ok || was.gen != p.GroupsGen {
			was = pendingFence{gen: p.GroupsGen, since: now}
		}
		seen[p.ID] = was
		if now.Sub(was.since) >= FenceGrace {
			due = append(due, p)
		}
	}
	s.pending = seen
	s.pendingMu.Unlock()
	// In a random order, each with its own time: a person whose kicks
	// keep failing must not starve the others.
	rand.Shuffle(len(due), func(i, j int) { due[i], due[j] = due[j], due[i] })
	total := 0
	var errs []error
	for i, p := range due {
		if ctx.Err() != nil {
			errs = append(errs, fmt.Errorf("fence sweep: %d people left for the next pass: %w", len(due)-i, ctx.Err()))
			break
		}
		pctx, cancel := context.WithTimeout(ctx, sweepPerPerson)
		n, err := s.regrouped(pctx, p, p, actorSweep, false)
		cancel()
		total += n
		if err != nil {
			errs = append(errs, err)
		}
	}
	return total, errors.Join(errs...)
}

// sweepPerPerson bounds the sweep's time on one person.
const sweepPerPerson = 10 * time.Second

// pendingFence is when this instance first saw a person's change
// unfinished.
type pendingFence struct {
	gen   uint64
	since time.Time
}

// actorSweep names the fence sweep in audit events.
const actorSweep = "fence sweep"

// Repolicy kicks the live sessions of every person whose roles a policy
// reload took away (their IdP removed, a binding narrowed or gone): they
// reconnect with what the new policy gives, or are refused. Without it a
// removed IdP's people kept their sessions until those expired. It returns
// the sessions kicked.
func (s *Service) Repolicy(ctx context.Context, prev, next *policy.Policy) (int, error) {
	all, err := s.cfg.People.List(ctx)
	if err != nil {
		return 0, fmt.Errorf("policy reload: %w", err)
	}
	total := 0
	var errs []error
	for _, p := range all {
		if !p.Disabled.IsZero() || len(p.Credentials) == 0 {
			continue
		}
		lost, kicked, _, kickErr := s.kickShrunk(ctx, p.Credentials, func(c *record.Credential) []string {
			was := personRoles(prev, p, c)
			return append(rolesLost(was, personRoles(next, p, c)), rolesChanged(prev, next, was)...)
		}, 0, actorPolicy)
		if len(lost) == 0 && kickErr == nil {
			continue
		}
		total += kicked
		ev := audit.Event{Kind: "person.policy", Result: audit.OK, Person: p.ID, Actor: actorPolicy,
			Reason: fmt.Sprintf("a policy reload took roles away; %d sessions kicked", kicked) + lostReason(lost)}
		if kickErr != nil {
			ev.Result, ev.Reason = audit.Error, ev.Reason+"; "+kickErr.Error()
			errs = append(errs, fmt.Errorf("person %s: %w", p.ID, kickErr))
		}
		s.cfg.Trail.RecordNow(ctx, ev)
	}
	if len(errs) > 0 {
		return total, fmt.Errorf("%w: sessions whose roles a policy reload took away not all kicked (they end at their expiry): %w", api.ErrUnavailable, errors.Join(errs...))
	}
	return total, nil
}

// actorPolicy names a policy reload in audit events.
const actorPolicy = "policy reload"

// kickShrunk kicks the live sessions of each credential of ids (not
// revoked) that lost returns roles for, behind fence (see cutOne; 0: none),
// and returns what each lost.
func (s *Service) kickShrunk(ctx context.Context, ids []string, lost func(*record.Credential) []string, fence uint64, actor string) (map[string][]string, int, []string, error) {
	var mu sync.Mutex
	out := map[string][]string{}
	_, kicked, failed, err := s.cut(ctx, ids, func(c *record.Credential) action {
		if c.Status == api.CredentialRevoked {
			return leave
		}
		gone := lost(c)
		if len(gone) == 0 {
			return leave
		}
		mu.Lock()
		out[c.ID] = gone
		mu.Unlock()
		return kickOnly
	}, fence, "", actor)
	return out, kicked, failed, err
}

// KickRetry is the first wait before a failed regroup kick is tried again;
// each wait doubles, kickRetries times (about two minutes in all).
var KickRetry = time.Second

const kickRetries = 7

// retryKick fences and kicks again, after wait, the credentials of ids
// whose regroup kick failed (the store or a server did not answer), until
// none fails or the tries run out. A restart forgets it: those sessions
// then keep the roles taken away until they expire (threat model P-16c).
func (s *Service) retryKick(after *record.Person, ids []string, shrunk func(*record.Credential) []string, actor string, wait time.Duration) {
	person, fence := after.ID, after.GroupsGen
	tries := 0
	var try func()
	try = func() {
		if s.isClosed() {
			return // the sweep of another instance finishes the change
		}
		tries++
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_, kicked, failed, err := s.kickShrunk(ctx, ids, shrunk, fence, actor)
		if len(failed) == 0 {
			if ferr := s.fenced(ctx, after); ferr != nil {
				s.cfg.Logger.Warn("a regroup's kicks are done but not recorded as done; the sweep does them again", "person", person, "error", ferr)
			}
		}
		switch {
		case len(failed) > 0 && errors.Is(err, sessions.ErrClosing):
			s.cfg.Logger.Warn("a regroup's kick is left unfinished at shutdown: another instance's sweep finishes it", "person", person)
		case len(failed) > 0 && tries < kickRetries:
			ids, wait = failed, 2*wait
			time.AfterFunc(wait, try)
		case len(failed) > 0:
			s.cfg.Logger.Error("a regroup's kick failed again and again: sessions keep the roles taken away until they expire", "person", person, "error", err)
			s.cfg.Trail.Record(audit.Event{Kind: "person.groups", Result: audit.Error, Person: person, Actor: actor,
				Reason: fmt.Sprintf("kick of the sessions whose roles shrank gave up after %d tries: %v", tries, err)})
		default:
			s.cfg.Trail.Record(audit.Event{Kind: "person.groups", Result: audit.OK, Person: person, Actor: actor,
				Reason: fmt.Sprintf("kick of the sessions whose roles shrank done at retry %d; %d sessions kicked", tries, kicked)})
		}
	}
	time.AfterFunc(wait, try)
}

// personRoles are the roles pol gives person p on credential c, as the
// connect path reads them (verifier/authn/person): an assurance the record
// does not state counts as the weakest.
func personRoles(pol *policy.Policy, p *record.Person, c *record.Credential) []string {
	a := c.Assurance
	if a != policy.AssuranceHardware {
		a = policy.AssuranceSoftware
	}
	return pol.RolesForPerson(policy.Person{IdP: p.IdP, Groups: p.Groups, Assurance: a,
		Synced: c.Synced, SessionKey: c.Kind == record.KindSessionKey})
}

// rolesChanged are the roles of names whose definition differs between
// prev and next (their subjects, admin grants, limits…): a session holding
// one has permissions the new policy may not give, and is kicked to take
// the new ones (fail closed: a widened role costs a reconnect).
func rolesChanged(prev, next *policy.Policy, names []string) []string {
	var out []string
	for _, n := range names {
		if b, ok := next.Roles[n]; ok && !reflect.DeepEqual(prev.Roles[n], b) {
			out = append(out, n+" (changed)")
		}
	}
	return out
}

// rolesLost is what was has and now has not.
func rolesLost(was, now []string) []string {
	return slices.DeleteFunc(slices.Clone(was), func(r string) bool { return slices.Contains(now, r) })
}

// lostReason says, for an audit event, what each credential lost.
func lostReason(lost map[string][]string) string {
	var b strings.Builder
	for _, c := range slices.Sorted(maps.Keys(lost)) {
		fmt.Fprintf(&b, "; credential %s loses %s", c, strings.Join(lost[c], ","))
	}
	return b.String()
}
