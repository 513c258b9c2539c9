package policy

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/jwt/v2"
)

const testPolicy = `
session_ttl: 2m
roles:
  billing:
    publish: {allow: ["billing.{{host}}.{{workload}}.>"], deny: ["billing.admin.>"]}
    subscribe: {allow: ["billing.>"]}
    response: {max_msgs: 1, expires: 5s}
    limits: {subs: 10, payload: 65536}
  metrics:
    publish: {allow: ["metrics.{{credential}}"]}
bindings:
  - host_roles: [finance]
    workloads: [billing]
    roles: [billing]
  - host_tags: [prod]
    workloads: ["*"]
    roles: [metrics]
`

func TestPolicyRolesFor(t *testing.T) {
	p, err := Parse([]byte(testPolicy))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		s    Subject
		want []string
	}{
		{"finance-billing-prod", Subject{HostRoles: []string{"finance"}, HostTags: []string{"prod"}, Workload: "billing"}, []string{"billing", "metrics"}},
		{"finance-billing", Subject{HostRoles: []string{"finance"}, Workload: "billing"}, []string{"billing"}},
		{"finance-other", Subject{HostRoles: []string{"finance"}, Workload: "copilot"}, nil},
		{"prod-any", Subject{HostTags: []string{"prod", "eu"}, Workload: "copilot"}, []string{"metrics"}},
		{"nothing", Subject{HostRoles: []string{"dev"}, Workload: "billing"}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := p.RolesFor(tc.s); !slices.Equal(got, tc.want) {
				t.Fatalf("RolesFor = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestPolicyApply(t *testing.T) {
	p, err := Parse([]byte(testPolicy))
	if err != nil {
		t.Fatal(err)
	}
	uc := jwt.NewUserClaims("UABC")
	s := Subject{HostID: "h-1", Workload: "billing", CredentialID: "cred-1", Inbox: "_INBOX.c.cred-1"}
	p.Apply(uc, []string{"billing", "metrics"}, s)
	if !slices.Contains(uc.Pub.Allow, "billing.h-1.billing.>") || !slices.Contains(uc.Pub.Allow, "metrics.cred-1") {
		t.Fatalf("publish allow %v: templates not expanded", uc.Pub.Allow)
	}
	if !slices.Contains(uc.Pub.Deny, "billing.admin.>") || !slices.Contains(uc.Sub.Allow, "_INBOX.c.cred-1.>") {
		t.Fatalf("deny %v, sub %v", uc.Pub.Deny, uc.Sub.Allow)
	}
	// H5: never every session's replies.
	if slices.Contains(uc.Sub.Allow, "_INBOX.>") {
		t.Fatalf("sub allow %v: _INBOX.> reads every other session's replies", uc.Sub.Allow)
	}
	// response: answers on inboxes, never NATS's allow_responses (which
	// reaches any subject a message it receives names as reply).
	if uc.Resp != nil || !slices.Contains(uc.Pub.Allow, "_INBOX.>") || uc.Limits.Subs != 10 || uc.Limits.Payload != 65536 {
		t.Fatalf("response %+v pub %v limits %+v", uc.Resp, uc.Pub.Allow, uc.Limits)
	}
	if p.SessionTTL != 2*time.Minute {
		t.Fatalf("session_ttl %v", p.SessionTTL)
	}
}

func TestParsePolicyRejects(t *testing.T) {
	for name, src := range map[string]string{
		"unknown-key":    "rolez: {}\n",
		"undefined-role": "bindings: [{roles: [ghost]}]\n",
		"bad-subject":    "roles: {r: {publish: {allow: ['a b']}}}\n",
		"ttl-too-short":  "session_ttl: 10ms\n",
		"not-yaml":       "roles: [\n",
	} {
		if _, err := Parse([]byte(src)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestPolicyReload(t *testing.T) {
	path := filepath.Join(t.TempDir(), "policy.yaml")
	if err := os.WriteFile(path, []byte(testPolicy), 0o600); err != nil {
		t.Fatal(err)
	}
	var reloadErr error
	ps, err := NewSource(path, func(err error) { reloadErr = err })
	if err != nil {
		t.Fatal(err)
	}
	if ps.Current().SessionTTL != 2*time.Minute {
		t.Fatal("initial policy not loaded")
	}
	future := rewritePolicy(t, ps, strings.Replace(testPolicy, "session_ttl: 2m", "session_ttl: 3m", 1))
	if got := ps.Current().SessionTTL; got != 3*time.Minute {
		t.Fatalf("after the change: session_ttl %v, want 3m", got)
	}
	if err := os.WriteFile(path, []byte("roles: [\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	later := future.Add(time.Minute)
	_ = os.Chtimes(path, later, later)
	ps.next = time.Time{}
	if got := ps.Current().SessionTTL; got != 3*time.Minute || reloadErr == nil {
		t.Fatalf("a broken policy replaced the good one (ttl %v) or went unreported (%v)", got, reloadErr)
	}
}

// expandPlaceholders must give what a strings.Replacer of the three
// placeholders gives (one pass, left to right, values not scanned again),
// on the awkward cases too: braces around a placeholder, a placeholder
// completed by a value, unknown ones.
func TestExpandPlaceholdersAsReplacer(t *testing.T) {
	s := Subject{HostID: "h-0123abcd", Workload: "cred", CredentialID: "AbC-_9", Person: "okta_00ff"}
	r := strings.NewReplacer("{{host}}", s.HostID, "{{workload}}", s.Workload, "{{credential}}", s.CredentialID, "{{person}}", s.Person)
	for _, x := range []string{
		"", "plain.subject.>", "billing.{{host}}.{{workload}}.>", "metrics.{{credential}}",
		"a.{{{{workload}}ential}}", "{{{host}}}", "{{", "{{host", "{{host}}{{host}}", "x.{{unknown}}.y",
		"{{workload}}}}", "{{{{{{credential}}}}}}", "{{hos{{host}}t}}", "dev.{{person}}.>", "{{pers{{person}}on}}",
	} {
		if got, want := expandPlaceholders(x, s), r.Replace(x); got != want {
			t.Errorf("%q: got %q, the Replacer gives %q", x, got, want)
		}
	}
}

// H5 residual: a role could grant subscribe ">" or "_INBOX.>" and read
// every other session's replies again. The policy refuses it.
func TestPolicyRefusesEveryInbox(t *testing.T) {
	for _, tc := range []struct {
		sub string
		ok  bool
	}{
		{">", false}, {"_INBOX.>", false}, {"_INBOX.*.*.*", false}, {"_INBOX.*.*.*.*", false}, {"*.>", false},
		{"billing.>", true}, {"_INBOX", true}, {"_INBOX.*", true}, {"metrics.*", true},
	} {
		t.Run(strings.NewReplacer(">", "gt", "*", "star", ".", "_").Replace(tc.sub), func(t *testing.T) {
			_, err := Parse([]byte("roles:\n  r:\n    subscribe: {allow: [\"" + tc.sub + "\"]}\n"))
			if tc.ok != (err == nil) {
				t.Fatalf("subscribe %q: %v, want ok=%v", tc.sub, err, tc.ok)
			}
		})
	}
}

// TestDrainWaitsForHolders: a reload's kick must not read the sessions
// while a decision that holds the replaced policy may still commit a grant
// with it (P-16b). Drain waits for every holder of the old policy, and
// only of it: holders of the new one do not hold it up.
func TestDrainWaitsForHolders(t *testing.T) {
	path := filepath.Join(t.TempDir(), "policy.yaml")
	if err := os.WriteFile(path, []byte(testPolicy), 0o600); err != nil {
		t.Fatal(err)
	}
	ps, err := NewSource(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	old, release := ps.Acquire()
	_, releaseTwice := ps.Acquire()
	releaseTwice()
	releaseTwice() // a second call does nothing
	rewritePolicy(t, ps, strings.Replace(testPolicy, "session_ttl: 2m", "session_ttl: 3m", 1))
	next, releaseNext := ps.Acquire()
	defer releaseNext()
	if next == old {
		t.Fatal("the policy was not reloaded")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	if err := ps.Drain(ctx, old); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("drain with a decision holding the old policy: %v, want it to wait", err)
	}
	drained := make(chan error, 1)
	go func() { drained <- ps.Drain(t.Context(), old) }()
	select {
	case err := <-drained:
		t.Fatalf("drain returned %v before the holder released", err)
	case <-time.After(20 * time.Millisecond):
	}
	release()
	if err := <-drained; err != nil {
		t.Fatalf("drain after the release: %v", err)
	}
}

// rewritePolicy writes content to ps's file, dated a minute ahead (a
// change the next Current sees), and skips the once-a-second throttle. It
// returns the date.
func rewritePolicy(t *testing.T, ps *Source, content string) time.Time {
	t.Helper()
	if err := os.WriteFile(ps.path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	future := time.Now().Add(time.Minute)
	if err := os.Chtimes(ps.path, future, future); err != nil {
		t.Fatal(err)
	}
	ps.next = time.Time{}
	return future
}
