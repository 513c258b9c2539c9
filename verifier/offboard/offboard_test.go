package offboard_test

import (
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/verifier/internal/testenv"
	"github.com/tpmauthn/tpmauthn/verifier/offboard"
	"github.com/tpmauthn/tpmauthn/verifier/people"
	"github.com/tpmauthn/tpmauthn/verifier/policy"
	"github.com/tpmauthn/tpmauthn/verifier/record"
	"github.com/tpmauthn/tpmauthn/verifier/store"
)

// regroupEnv is a store, people and an offboarding service under a policy
// where developers get dev, and ops get ops on hardware keys only.
func regroupEnv(t *testing.T) (*testenv.Env, *people.Service, *testenv.Kicks, *testenv.Alerts, *offboard.Service) {
	t.Helper()
	env := testenv.New(t)
	pol := regroupPolicy(t, `{groups: [ops], roles: [ops], require: {assurance: hardware}}`)
	polf := func() *policy.Policy { return pol }
	ppl := people.New(people.Config{Store: env.Store, Policy: polf, Trail: env.Trail})
	k, a := &testenv.Kicks{}, &testenv.Alerts{}
	ob := offboard.New(offboard.Config{People: ppl, Store: env.Store, Fleet: env.Fleet, Sessions: k, Alerts: a, Trail: env.Trail, Policy: polf})
	return env, ppl, k, a, ob
}

// regroupPolicy is the tests' policy: developers get dev, and binding
// (a YAML flow mapping) gives ops.
func regroupPolicy(t *testing.T, binding string) *policy.Policy {
	t.Helper()
	p, err := policy.Parse([]byte(`
roles:
  dev: {publish: {allow: ["dev.>"]}}
  ops: {publish: {allow: ["ops.>"]}}
people:
  idps: [{name: okta, issuer: "https://okta.example.com", client_id: c, client_secret_env: S}]
  bindings:
    - {groups: [developers], roles: [dev]}
    - ` + binding + `
`))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestRegroupKicksOnlyShrunk: a group whose role needs hardware is lost;
// only the hardware credential loses a role (the software one never had
// it), so only its sessions are kicked, and nobody is revoked.
func TestRegroupKicksOnlyShrunk(t *testing.T) {
	env, ppl, k, a, ob := regroupEnv(t)
	ctx := t.Context()
	p := personWithTwoCredentials(t, env, ppl)
	for _, tc := range []struct {
		name   string
		groups []string
		kicked []string
	}{
		{"unchanged", []string{"ops", "developers"}, nil},
		{"gained", []string{"developers", "ops", "sales"}, nil},
		{"lostHardwareRole", []string{"developers", "sales"}, []string{"hw"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k.Reset()
			if _, err := ob.Regroup(ctx, p.ID, func([]string) []string { return tc.groups }, "test"); err != nil || !slices.Equal(k.List(), tc.kicked) {
				t.Fatalf("regroup: kicked %v, %v; want %v", k.List(), err, tc.kicked)
			}
		})
	}
	for _, id := range []string{"hw", "sw"} {
		if c := env.Credential(t, id); c.Status != api.CredentialActive {
			t.Fatalf("credential %s is %s after a regroup", id, c.Status)
		}
	}
	if len(a.Kinds()) != 0 {
		t.Fatal("a regroup raised an alert")
	}
	// An offboarding of someone with live credentials alerts; of someone
	// already offboarded (nothing left to cut), it does not.
	for _, run := range []string{"first", "again"} {
		if _, err := ob.Offboard(ctx, p.ID, run, "operator"); err != nil {
			t.Fatal(err)
		}
		if n := len(a.Kinds()); n != 1 {
			t.Fatalf("after the %s offboarding: %d alerts, want 1", run, n)
		}
	}
}

// TestRepolicyKicksWhatAReloadTookAway: a policy reload that removes a
// person's IdP, or narrows a binding, kicks the sessions of the credentials
// whose roles shrank; one that changes nothing of theirs kicks nothing.
func TestRepolicyKicksWhatAReloadTookAway(t *testing.T) {
	env := testenv.New(t)
	parse := func(s string) *policy.Policy {
		t.Helper()
		p, err := policy.Parse([]byte(s))
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	const roles = `
roles:
  dev: {publish: {allow: ["dev.>"]}}
  ops: {publish: {allow: ["ops.>"]}}
`
	const okta = `  idps: [{name: okta, issuer: "https://okta.example.com", client_id: c, client_secret_env: S}]
`
	before := parse(roles + "people:\n" + okta + `  bindings:
    - {groups: [developers], roles: [dev]}
    - {groups: [ops], roles: [ops], require: {assurance: hardware}}
`)
	polf := func() *policy.Policy { return before }
	ppl := people.New(people.Config{Store: env.Store, Policy: polf, Trail: env.Trail})
	k := &testenv.Kicks{}
	ob := offboard.New(offboard.Config{People: ppl, Store: env.Store, Fleet: env.Fleet, Sessions: k, Alerts: &testenv.Alerts{}, Trail: env.Trail, Policy: polf})
	ctx := t.Context()
	personWithTwoCredentials(t, env, ppl)
	for _, tc := range []struct {
		name   string
		next   *policy.Policy
		kicked []string
	}{
		{"unchanged", before, nil},
		{"opsNarrowed", parse(roles + "people:\n" + okta + `  bindings:
    - {groups: [developers], roles: [dev]}
    - {groups: [sre], roles: [ops]}
`), []string{"hw"}},
		{"idpRemoved", parse(roles), []string{"hw", "sw"}},
		// Found by review: a role emptied, its name kept.
		{"opsRoleEmptied", parse(`
roles:
  dev: {publish: {allow: ["dev.>"]}}
  ops: {publish: {allow: ["nothing.here"]}}
people:
` + okta + `  bindings:
    - {groups: [developers], roles: [dev]}
    - {groups: [ops], roles: [ops], require: {assurance: hardware}}
`), []string{"hw"}},
		{"bindingsReordered", parse(roles + "people:\n" + okta + `  bindings:
    - {groups: [ops], roles: [ops], require: {assurance: hardware}}
    - {groups: [developers], roles: [dev]}
`), nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k.Reset()
			_, err := ob.Repolicy(ctx, before, tc.next)
			kicked := slices.Sorted(slices.Values(k.List())) // kicked concurrently
			if err != nil || !slices.Equal(kicked, tc.kicked) {
				t.Fatalf("Repolicy: kicked %v (%v), want %v", kicked, err, tc.kicked)
			}
		})
	}
}

// personWithTwoCredentials logs an okta person in (groups developers and
// ops) and gives them two credentials: "hw" (hardware) and "sw" (no
// assurance stated).
func personWithTwoCredentials(t *testing.T, env *testenv.Env, ppl *people.Service) *record.Person {
	t.Helper()
	ctx := t.Context()
	p, err := ppl.Login(ctx, people.Identity{IdP: "okta", Issuer: "https://okta.example.com", SubjectClaim: "sub", Subject: "u1",
		Groups: []string{"developers", "ops"}}, record.FlowBrowser, "")
	if err != nil {
		t.Fatal(err)
	}
	for id, assurance := range map[string]string{"hw": policy.AssuranceHardware, "sw": ""} {
		env.PutCredential(t, id, api.CredentialActive)
		if _, _, err := store.Mutate(ctx, env.Store.Credentials, id, func(c *record.Credential) error {
			c.Person, c.Assurance = p.ID, assurance
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	if _, _, err := store.Mutate(ctx, env.Store.People, p.ID, func(q *record.Person) error {
		q.Credentials = []string{"hw", "sw"}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestRegroupFencesOldGroups: a connect that read the person's old groups
// must not be granted after the regroup's kick (P-16c). The regroup raises
// the fence (GroupsGen) of each credential that loses a role, in a
// compare-and-set, and kicks the sessions of the record it wrote: a
// connect's commit at the revision it read before then fails, and it
// decides again, against groups of the new generation
// (verifier/authn/person, TestRolesNeedTheFencedGeneration).
func TestRegroupFencesOldGroups(t *testing.T) {
	env, ppl, k, _, ob := regroupEnv(t)
	ctx := t.Context()
	p := personWithTwoCredentials(t, env, ppl)
	// A connect on hw reads its credential, then commits a session.
	racing, rev, err := store.Get[record.Credential](ctx, env.Store.Credentials, "hw")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ob.Regroup(ctx, p.ID, func([]string) []string { return []string{"developers"} }, "test"); err != nil {
		t.Fatal(err)
	}
	if got := k.List(); !slices.Equal(got, []string{"hw"}) {
		t.Fatalf("kicked %v, want [hw]", got)
	}
	after, err := ppl.Person(ctx, p.ID)
	if err != nil {
		t.Fatal(err)
	}
	if after.GroupsGen <= p.GroupsGen {
		t.Fatalf("groups generation %d after the regroup, was %d", after.GroupsGen, p.GroupsGen)
	}
	hw, sw := env.Credential(t, "hw"), env.Credential(t, "sw")
	if hw.GroupsGen != after.GroupsGen || sw.GroupsGen != 0 {
		t.Fatalf("fences hw %d sw %d, want %d and 0 (sw lost nothing)", hw.GroupsGen, sw.GroupsGen, after.GroupsGen)
	}
	racing.Sessions = append(racing.Sessions, record.SessionRef{Server: "S", Client: 7, Expires: time.Now().Add(time.Hour)})
	if _, err := store.Update(ctx, env.Store.Credentials, "hw", racing, rev); !errors.Is(err, api.ErrConflict) {
		t.Fatalf("a commit read before the regroup: %v, want ErrConflict", err)
	}
	// A regroup that takes nothing away neither kicks nor fences.
	k.Reset()
	if _, err := ob.Regroup(ctx, p.ID, func([]string) []string { return []string{"developers", "sales"} }, "test"); err != nil {
		t.Fatal(err)
	}
	if got := k.List(); len(got) != 0 {
		t.Fatalf("kicks %v after a regroup that took nothing away", got)
	}
	if c := env.Credential(t, "hw"); c.GroupsGen != hw.GroupsGen {
		t.Fatalf("hw fenced at %d by a regroup that took nothing from it", c.GroupsGen)
	}
}

// TestRegroupKickRetried: a regroup's kick that fails (a server did not
// answer) is tried again in the background: the groups are written, so a
// regroup asked again would see no change and kick nothing.
func TestRegroupKickRetried(t *testing.T) {
	defer func(d time.Duration) { offboard.KickRetry = d }(offboard.KickRetry)
	offboard.KickRetry = 10 * time.Millisecond
	env, ppl, k, _, ob := regroupEnv(t)
	p := personWithTwoCredentials(t, env, ppl)
	k.FailNext(2)
	if _, err := ob.Regroup(t.Context(), p.ID, func([]string) []string { return []string{"developers"} }, "test"); !errors.Is(err, api.ErrUnavailable) {
		t.Fatalf("regroup with its kick failing: %v, want ErrUnavailable", err)
	}
	if got := k.List(); len(got) != 0 {
		t.Fatalf("kicked %v with the kicks failing", got)
	}
	deadline := time.Now().Add(5 * time.Second)
	for len(k.List()) == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if got := k.List(); !slices.Equal(got, []string{"hw"}) {
		t.Fatalf("kicked %v after the retries, want [hw]", got)
	}
	time.Sleep(100 * time.Millisecond) // no retry once it succeeded
	if got := k.List(); len(got) != 1 {
		t.Fatalf("kicked %v: retried after it succeeded", got)
	}
}

// TestFinishFences: a change of groups whose regroup never ran to its end
// (here: written with no regroup at all, as when a verifier dies between
// the two) is finished by the sweep once FenceGrace has passed since this
// instance first saw it, kicking every session of the person (what they
// hold is not known); a finished regroup leaves nothing to sweep.
func TestFinishFences(t *testing.T) {
	env, ppl, k, _, ob := regroupEnv(t)
	ctx := t.Context()
	p := personWithTwoCredentials(t, env, ppl)
	if p.FencedGen != p.GroupsGen || p.GroupsGen == 0 {
		t.Fatalf("a new person: fenced %d, groups generation %d", p.FencedGen, p.GroupsGen)
	}
	// Finished: a regroup records it.
	if _, err := ob.Regroup(ctx, p.ID, func([]string) []string { return []string{"developers", "ops", "sales"} }, "test"); err != nil {
		t.Fatal(err)
	}
	after, _ := ppl.Person(ctx, p.ID)
	if after.FencedGen != after.GroupsGen || !slices.Equal(after.FencedGroups, after.Groups) {
		t.Fatalf("after a regroup: fenced %d %v, groups %d %v", after.FencedGen, after.FencedGroups, after.GroupsGen, after.Groups)
	}
	// Unfinished: the groups written, no regroup.
	if _, _, err := ppl.UpdateGroups(ctx, p.ID, func([]string) []string { return []string{"developers"} }); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	if n, err := ob.FinishFences(ctx, now); err != nil || n != 0 || len(k.List()) != 0 {
		t.Fatalf("sweep within the grace: %d, %v, kicked %v", n, err, k.List())
	}
	// What a session of the unfinished change holds is not known (any
	// group list since the last finished change): every session goes.
	if _, err := ob.FinishFences(ctx, now.Add(offboard.FenceGrace)); err != nil || !slices.Equal(k.List(), []string{"hw", "sw"}) {
		t.Fatalf("sweep past the grace: %v, kicked %v, want [hw sw]", err, k.List())
	}
	done, _ := ppl.Person(ctx, p.ID)
	for _, c := range []string{"hw", "sw"} {
		if done.FencedGen != done.GroupsGen || env.Credential(t, c).GroupsGen != done.GroupsGen {
			t.Fatalf("after the sweep: person fenced %d of %d, %s fenced %d", done.FencedGen, done.GroupsGen, c, env.Credential(t, c).GroupsGen)
		}
	}
	k.Reset()
	if _, err := ob.FinishFences(ctx, now.Add(2*offboard.FenceGrace)); err != nil || len(k.List()) != 0 {
		t.Fatalf("a sweep with nothing unfinished: %v, kicked %v", err, k.List())
	}
}

// A role given by a change still unfinished and taken by the next is not
// missed (found by review): the last finished change had no ops, the
// unfinished one added it (a connect took it), the next takes it away.
// Counting from the finished change's groups saw nothing lost and kicked
// nothing; every session goes now, and the change is recorded as done.
func TestRegroupAfterUnfinishedAdd(t *testing.T) {
	env, ppl, k, _, ob := regroupEnv(t)
	ctx := t.Context()
	p := personWithTwoCredentials(t, env, ppl)
	if _, err := ob.Regroup(ctx, p.ID, func([]string) []string { return []string{"developers"} }, "test"); err != nil {
		t.Fatal(err)
	}
	finished, _ := ppl.Person(ctx, p.ID)
	if finished.FencedGen != finished.GroupsGen {
		t.Fatalf("regroup not recorded as finished: %d of %d", finished.FencedGen, finished.GroupsGen)
	}
	// ops comes back; its regroup is still under way (or died).
	if _, _, err := ppl.UpdateGroups(ctx, p.ID, func([]string) []string { return []string{"developers", "ops"} }); err != nil {
		t.Fatal(err)
	}
	k.Reset()
	if _, err := ob.Regroup(ctx, p.ID, func([]string) []string { return []string{"developers"} }, "test"); err != nil {
		t.Fatal(err)
	}
	if got := k.List(); !slices.Contains(got, "hw") {
		t.Fatalf("kicked %v: hw held ops from the unfinished change and kept it", got)
	}
	done, _ := ppl.Person(ctx, p.ID)
	if done.FencedGen != done.GroupsGen || env.Credential(t, "hw").GroupsGen != done.GroupsGen {
		t.Fatalf("after: person fenced %d of %d, hw fenced %d", done.FencedGen, done.GroupsGen, env.Credential(t, "hw").GroupsGen)
	}
}

// A record whose groups changed before the fence fields existed (fenced_gen
// 0, groups_gen above it: written by an earlier version) has no finished
// change to count from: the sweep kicks every session rather than record it
// done with nothing kicked (found by review).
func TestFinishFencesLegacyRecord(t *testing.T) {
	env, ppl, k, _, ob := regroupEnv(t)
	ctx := t.Context()
	p := personWithTwoCredentials(t, env, ppl)
	if _, _, err := store.Mutate(ctx, env.Store.People, p.ID, func(q *record.Person) error {
		q.Groups, q.GroupsGen, q.FencedGen, q.FencedGroups = []string{"developers"}, q.GroupsGen+1, 0, nil
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	_, _ = ob.FinishFences(ctx, now)
	if _, err := ob.FinishFences(ctx, now.Add(offboard.FenceGrace)); err != nil || !slices.Equal(k.List(), []string{"hw", "sw"}) {
		t.Fatalf("sweep of a legacy record: %v, kicked %v, want [hw sw]", err, k.List())
	}
	if done, _ := ppl.Person(ctx, p.ID); done.FencedGen != done.GroupsGen {
		t.Fatalf("legacy record not recorded as finished: %d of %d", done.FencedGen, done.GroupsGen)
	}
}

// A group and its binding retired together (found by review): the reload
// swaps the policy, a regroup removes the group before the reload's own
// kick runs. The regroup compared the group lists under the new policy
// (nothing lost) and the reload's kick compared the policies over the new
// groups (nothing lost): the session kept ops. The regroup now counts the
// replaced policy's roles too.
func TestRegroupDuringPolicyReload(t *testing.T) {
	env := testenv.New(t)
	old, next := regroupPolicy(t, `{groups: [ops], roles: [ops]}`), regroupPolicy(t, `{groups: [sre], roles: [ops]}`)
	cur := old
	polf := func() *policy.Policy { return cur }
	ppl := people.New(people.Config{Store: env.Store, Policy: polf, Trail: env.Trail})
	k := &testenv.Kicks{}
	ob := offboard.New(offboard.Config{People: ppl, Store: env.Store, Fleet: env.Fleet, Sessions: k, Alerts: &testenv.Alerts{}, Trail: env.Trail, Policy: polf})
	p := personWithTwoCredentials(t, env, ppl)

	cur = next // the swap; the reload's kick has not run yet
	ob.PolicyReplaced(old, time.Now())
	if _, err := ob.Regroup(t.Context(), p.ID, func([]string) []string { return []string{"developers"} }, "scim"); err != nil {
		t.Fatal(err)
	}
	if _, err := ob.Repolicy(t.Context(), old, next); err != nil {
		t.Fatal(err)
	}
	if got := k.List(); !slices.Equal(got, []string{"hw", "sw"}) {
		t.Fatalf("kicked %v, want [hw sw]: both held ops from the old policy and the old groups", got)
	}
}

// A fence already at or above this regroup's (a later regroup's, or a
// generation an older verifier reset) still writes the credential, so a
// connect that read it before loses its compare-and-set (found by review).
func TestFenceAlwaysWrites(t *testing.T) {
	env, ppl, _, _, ob := regroupEnv(t)
	ctx := t.Context()
	p := personWithTwoCredentials(t, env, ppl)
	if _, _, err := store.Mutate(ctx, env.Store.Credentials, "hw", func(c *record.Credential) error {
		c.GroupsGen = 1000
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	racing, rev, err := store.Get[record.Credential](ctx, env.Store.Credentials, "hw")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ob.Regroup(ctx, p.ID, func([]string) []string { return []string{"developers"} }, "test"); err != nil {
		t.Fatal(err)
	}
	if _, err := store.Update(ctx, env.Store.Credentials, "hw", racing, rev); !errors.Is(err, api.ErrConflict) {
		t.Fatalf("a commit at the revision read before the regroup: %v, want ErrConflict", err)
	}
	if got := env.Credential(t, "hw").GroupsGen; got != 1000 {
		t.Fatalf("the fence went down to %d", got)
	}
}
