package policy

import (
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/nats-io/jwt/v2"
)

// readmeBlock returns the text of README.md between <!-- name --> and
// <!-- /name -->.
func readmeBlock(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(b), "<!-- "+name+" -->\n")
	block, _, ok2 := strings.Cut(rest, "<!-- /"+name+" -->")
	if !ok || !ok2 {
		t.Fatalf("README.md has no <!-- %s --> ... <!-- /%s --> block", name, name)
	}
	return block
}

// between is the text of s between the line start and the line end.
func between(t *testing.T, s, start, end string) string {
	t.Helper()
	_, rest, ok := strings.Cut(s, start+"\n")
	body, _, ok2 := strings.Cut(rest, "\n"+end+"\n")
	if !ok || !ok2 {
		t.Fatalf("no %q ... %q in:\n%s", start, end, s)
	}
	return body
}

// grants applies p's roles for s and reports whether its session may both
// publish and subscribe to subject.
func grants(p *Policy, s Subject, subject string) bool {
	uc := jwt.NewUserClaims("U")
	p.Apply(uc, p.RolesFor(s), s)
	allowed := func(ps jwt.Permission) bool {
		return slices.ContainsFunc(ps.Allow, func(a string) bool { return subjectMatches(a, subject) }) &&
			!slices.ContainsFunc(ps.Deny, func(d string) bool { return subjectMatches(d, subject) })
	}
	return allowed(uc.Pub) && allowed(uc.Sub)
}

// TestReadmeWalkthrough: README's "Run a verifier" walk-through fits
// together: its policy loads, and binds the roles its join token gives to
// the workload its agent configures, on the subject its workload uses.
func TestReadmeWalkthrough(t *testing.T) {
	walk := readmeBlock(t, "walkthrough")
	p, err := Parse([]byte(between(t, walk, "cat > policy.yaml <<'EOF'", "EOF")))
	if err != nil {
		t.Fatalf("the walk-through's policy: %v", err)
	}
	roles := regexp.MustCompile(`token create --roles (\S+)`).FindStringSubmatch(walk)
	workload := regexp.MustCompile(`- name: (\S+)`).FindStringSubmatch(between(t, walk, "cat > agent.yaml <<EOF", "EOF"))
	subject := regexp.MustCompile(`workload --socket \S+ --subject (\S+)`).FindStringSubmatch(walk)
	if roles == nil || workload == nil || subject == nil {
		t.Fatalf("the walk-through lost its token create --roles, agent workload or workload --subject:\n%s", walk)
	}
	s := Subject{HostID: "h-0123456789abcdef", HostRoles: strings.Split(roles[1], ","), Workload: workload[1], CredentialID: "c", Inbox: "_INBOX.c.c"}
	if got := p.RolesFor(s); len(got) == 0 {
		t.Fatalf("the walk-through's token gives roles %s, and its policy binds none of them to workload %s", roles[1], workload[1])
	}
	if !grants(p, s, subject[1]) {
		t.Fatalf("workload %s may not publish and subscribe to %s under the walk-through's policy", workload[1], subject[1])
	}
}

// TestReadmePolicyReference: README's reference policy loads, and means
// what the text around it says: bindings add up, {{host}} is the host's ID
// (not its hostname), limits reach the session.
func TestReadmePolicyReference(t *testing.T) {
	ref := readmeBlock(t, "policy-reference")
	p, err := Parse([]byte(between(t, ref, "```yaml", "```")))
	if err != nil {
		t.Fatalf("the reference policy: %v", err)
	}
	billing := Subject{HostID: "h-0123456789abcdef", Hostname: "web1", HostRoles: []string{"finance"}, HostTags: []string{"eu"}, Workload: "billing"}
	tests := []struct {
		name string
		s    Subject
		want []string
	}{
		{"all-bindings", billing, []string{"billing", "metrics"}},
		{"tag-missing", Subject{HostRoles: []string{"finance"}, Workload: "billing"}, []string{"metrics"}},
		{"other-workload", Subject{HostRoles: []string{"finance"}, HostTags: []string{"eu"}, Workload: "copilot"}, []string{"metrics"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := p.RolesFor(tc.s); !slices.Equal(got, tc.want) {
				t.Fatalf("RolesFor = %v, want %v", got, tc.want)
			}
		})
	}
	uc := jwt.NewUserClaims("U")
	p.Apply(uc, p.RolesFor(billing), billing)
	for _, want := range []string{"billing.h-0123456789abcdef.>", "metrics.h-0123456789abcdef.billing"} {
		if !slices.Contains(uc.Pub.Allow, want) {
			t.Errorf("publish allow %v lacks %s", uc.Pub.Allow, want)
		}
	}
	// response: answers on reply inboxes, never allow_responses.
	if uc.Limits.Subs != 100 || uc.Limits.Payload != 65536 || uc.Resp != nil || !slices.Contains(uc.Pub.Allow, answerInboxes) {
		t.Errorf("limits %+v, response %+v, publish %v", uc.Limits, uc.Resp, uc.Pub.Allow)
	}
}
