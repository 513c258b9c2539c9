package e2e

import (
	"crypto/x509"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/internal/fleettest"
	"github.com/tpmauthn/tpmauthn/internal/oidctest"
	"github.com/tpmauthn/tpmauthn/internal/swtpmtest"
)

// The response trick (found by the review of P-12): NATS's allow_responses
// lets a session publish to the reply subject of any message delivered to
// it, past every publish deny, and a session may deliver one to itself: it
// publishes to a subject it also subscribes to, with the reply set to any
// subject it likes (another host's v1 scope, a person's operator API
// subject), then "answers" it. Roles' response: now lets a session publish
// to inboxes (_INBOX.>), never allow_responses.

// loopCall plays the trick on nc (subscribed to and allowed to publish on
// loop): it sends itself a message whose reply is target, then answers it
// with body, expecting the verifier's reply on its own inbox.
func loopCall(nc *nats.Conn, loop, target string, body any) (*nats.Msg, error) {
	self, err := nc.SubscribeSync(loop)
	if err != nil {
		return nil, err
	}
	defer self.Unsubscribe()
	inbox := nc.NewInbox()
	replies, err := nc.SubscribeSync(inbox)
	if err != nil {
		return nil, err
	}
	defer replies.Unsubscribe()
	if err := nc.PublishRequest(loop, target, nil); err != nil {
		return nil, err
	}
	m, err := self.NextMsg(2 * time.Second)
	if err != nil {
		return nil, fmt.Errorf("own message: %w", err)
	}
	b, _ := json.Marshal(body)
	if err := nc.PublishMsg(&nats.Msg{Subject: m.Reply, Reply: inbox, Data: b}); err != nil {
		return nil, err
	}
	return replies.NextMsg(2 * time.Second)
}

const responderPolicy = `session_ttl: 1m
roles:
  demo:
    publish: {allow: ["demo.>"]}
    subscribe: {allow: ["demo.>"]}
    response: {max_msgs: 1, expires: 1m}
bindings:
  - host_roles: [demo]
    roles: [demo]
`

// TestAttackResponseReachesOtherScopes: a workload whose role answers
// requests cannot reach another host's v1 scope, nor a person's operator
// API subject, by answering a message it sent itself.
func TestAttackResponseReachesOtherScopes(t *testing.T) {
	path := filepath.Join(t.TempDir(), "policy.yaml")
	if err := os.WriteFile(path, []byte(responderPolicy), 0o600); err != nil {
		t.Fatal(err)
	}
	f := fleettest.New(t, func(f *fleettest.Fleet) { f.Config.PolicyFile = path })
	victim, err := f.Enroll(t, fleettest.Authenticator(t, swtpmtest.New(t, swtpmtest.SameManufacturer(f.TPM))), f.Token(t, time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	h := f.NewHost(t) // the attacker: a demo workload of another host
	onErr, violations := fleettest.Violations()
	nc, err := h.Connect(t, onErr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	// Its answers go to inboxes, but never the enrollment sessions' (found
	// by the second review: a forged enroll.status "approved").
	for _, inbox := range []string{"_INBOX.h." + victim.HostID + ".nuid.tok", "_INBOX.t.0123456789abcdef01234567.nuid.tok", "_INBOX.e.0123456789abcdef01234567.nuid"} {
		fleettest.PublishRefused(t, nc, violations, inbox)
	}
	// It still answers requests: a requester gets its reply.
	sub, err := nc.Subscribe("demo.echo", func(m *nats.Msg) { _ = m.Respond(m.Data) })
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if r, err := nc.Request("demo.echo", []byte("ping"), 2*time.Second); err != nil || string(r.Data) != "ping" {
		t.Fatalf("a responder's own request-reply: %v", err)
	}
	for name, target := range map[string]struct {
		subj string
		body any
	}{
		"credentials.status": {api.HostScope(victim.HostID).Subject(api.OpCredentialsStatus), api.CredentialStatusRequest{HostID: victim.HostID}},
		"register.begin":     {api.HostScope(victim.HostID).Subject(api.OpRegisterBegin), api.RegisterBeginRequest{HostID: victim.HostID, Workload: "x"}},
		"operator API":       {api.AdminPersonSubject("okta_0123", "CRED", "status"), struct{}{}},
	} {
		if m, err := loopCall(nc, "demo.loop", target.subj, target.body); err == nil {
			t.Errorf("%s reached through a self-sent message's reply: %s %q", name, m.Header.Get("Nats-Service-Error-Code"), m.Data)
		}
	}
}

// TestAttackResponseActsAsOpsPerson: the same trick against a person's
// operator API subject, with the ops person's real IDs: no join token.
func TestAttackResponseActsAsOpsPerson(t *testing.T) {
	requireRoot(t)
	op := oidctest.Start(t,
		oidctest.User{ID: "u-olga", Username: "olga", Password: "pw", Name: "Olga", Email: "olga@example.com", Groups: []string{"ops"}})
	policy := strings.Replace(operatorPolicy, `demo: {publish: {allow: ["demo.>"]}, subscribe: {allow: ["demo.>"]}}`,
		`demo: {publish: {allow: ["demo.>"]}, subscribe: {allow: ["demo.>"]}, response: {max_msgs: 1, expires: 1m}}`, 1)
	f := peopleFleetWith(t, op, policy)
	h := f.NewHost(t)
	st, olga := personLoginAs(t, h, opsUID, loginGrantAt(t, f, op, "olga", "pw", h, opsUID).AccessToken)
	if st != 200 {
		t.Fatalf("login: %d %v", st, olga)
	}
	target := api.AdminPersonSubject(personIDOf(olga), fmt.Sprint(olga["credential_id"]), "token.create")
	nc, err := h.Connect(t) // the demo workload
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if m, err := loopCall(nc, "demo.loop", target, api.TokenCreateRequest{Roles: []string{"demo"}, TTL: time.Hour}); err == nil {
		t.Fatalf("a workload reached the ops person's operator API: %s %q", m.Header.Get("Nats-Service-Error-Code"), m.Data)
	}
}

// TestAttackOperatorKeyAsPerson: the operator key (break-glass) may not
// publish on people's operator API subjects: it would act as a person,
// with no break-glass alert and the person named in the audit trail.
func TestAttackOperatorKeyAsPerson(t *testing.T) {
	f := fleettest.New(t)
	if m, err := f.Op.Request(api.AdminPersonSubject("okta_x", "CRED", "status"), []byte(`{}`), 2*time.Second); err == nil {
		t.Fatalf("the operator key reached the person gate: %s %s", m.Header.Get("Nats-Service-Error-Code"), m.Data)
	}
}

// TestAttackWildcardSubscriberReadsV1: APP-local subscribers get a copy of
// requests to an imported service; every policy session's JWT denies the
// verifier's APIs, which the server enforces on wildcard subscriptions too.
func TestAttackWildcardSubscriberReadsV1(t *testing.T) {
	// (Patterns with a wildcard first token and four or more tokens would
	// also reach inboxes: refused at load, TestInboxPolicy.)
	patterns := []string{"tpmauthn.>", "*.v1.>", "tpmauthn.*.t.>", "tpmauthn.*.h.>", "tpmauthn.*.*.*.enroll.begin"}
	policy := `session_ttl: 1m
roles:
  demo:
    publish: {allow: ["demo.>"]}
    subscribe: {allow: ["demo.>", "` + strings.Join(patterns, `", "`) + `"]}
bindings:
  - host_roles: [demo]
    roles: [demo]
`
	path := filepath.Join(t.TempDir(), "policy.yaml")
	if err := os.WriteFile(path, []byte(policy), 0o600); err != nil {
		t.Fatal(err)
	}
	f := fleettest.New(t, func(f *fleettest.Fleet) { f.Config.PolicyFile = path })
	h := f.NewHost(t)
	snoop, err := h.Connect(t)
	if err != nil {
		t.Fatal(err)
	}
	defer snoop.Close()
	got := make(chan string, 64)
	for _, p := range patterns {
		if _, err := snoop.Subscribe(p, func(m *nats.Msg) { got <- p + " <- " + m.Subject }); err != nil {
			t.Fatal(err)
		}
		if _, err := snoop.QueueSubscribe(p, "q", func(m *nats.Msg) { got <- "queue " + p + " <- " + m.Subject }); err != nil {
			t.Fatal(err)
		}
	}
	if err := snoop.Flush(); err != nil {
		t.Fatal(err)
	}
	tok := f.Token(t, time.Hour, "demo")
	enrollment, err := f.EnrollSession(tok)
	if err != nil {
		t.Fatal(err)
	}
	defer enrollment.Close()
	ek, err := fleettest.Authenticator(t, swtpmtest.New(t, swtpmtest.SameManufacturer(f.TPM))).TPM().EK()
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKIXPublicKey(ek.Public)
	if err != nil {
		t.Fatal(err)
	}
	fleettest.Request(t, enrollment, api.TokenScope(tok).Subject(api.OpEnrollBegin), api.EnrollBeginRequest{Token: tok, Hostname: "victim", EKPublic: der}, nil)
	e, err := h.Agent.Authenticator().Enrollment()
	if err != nil {
		t.Fatal(err)
	}
	hs, err := f.HostSession(e)
	if err != nil {
		t.Fatal(err)
	}
	defer hs.Close()
	fleettest.Request(t, hs, api.HostScope(e.HostID).Subject(api.OpEnrollStatus), api.EnrollStatusRequest{HostID: e.HostID, Proof: e.Proof}, nil)
	// What a subscriber would have received is delivered by now: a round
	// trip on the snooping connection comes after it.
	if err := snoop.Flush(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	close(got)
	for l := range got {
		t.Errorf("a wildcard subscription read another session's request: %s", l)
	}
}
