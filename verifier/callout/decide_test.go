package callout

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nkeys"

	"github.com/tpmauthn/tpmauthn/audit"
	"github.com/tpmauthn/tpmauthn/verifier/authn"
)

// durableTrail is trail (denials_test.go) as the transport's recorder.
type durableTrail struct{ trail }

func (t *durableTrail) RecordDurable(_ context.Context, e audit.Event) error {
	t.Record(e)
	return nil
}
func (t *durableTrail) Unavailable() error { return nil }

// twice prepares a grant with each of roles in turn, as a method whose
// last write was retried does, and grants the last.
type twice struct{ roles [][]string }

func (d twice) Decide(_ context.Context, r *authn.Request) (*jwt.UserClaims, error) {
	var uc *jwt.UserClaims
	for _, roles := range d.roles {
		uc = jwt.NewUserClaims(r.Claims.UserNkey)
		r.Event.Roles = roles
		r.Prepare(uc)
	}
	return uc, nil
}

// A decision retried with other roles (a regroup's fence made its write
// fail) must not leave the first attempt's allow event standing alone in
// the trail: it is withdrawn, and the roles granted are in an allow event
// of their own. A retry with the same roles stores one event.
func TestRedecidedGrantAudited(t *testing.T) {
	for _, tc := range []struct {
		name  string
		roles [][]string
		want  []string // kinds and roles, in order
	}{
		{"same roles", [][]string{{"dev", "ops"}, {"dev", "ops"}}, []string{"connect allow [dev ops]"}},
		{"fewer roles", [][]string{{"dev", "ops"}, {"dev"}}, []string{"connect allow [dev ops]", "connect allow [dev]", "connect.withdrawn deny [dev ops]"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			issuer, _ := nkeys.CreateAccount()
			xkey, _ := nkeys.CreateCurveKeys()
			tr := &durableTrail{}
			s, err := New(Config{Issuer: issuer, XKey: xkey, Decider: twice{tc.roles}, Trail: tr})
			if err != nil {
				t.Fatal(err)
			}
			user, _ := nkeys.CreateUser()
			pub, _ := user.PublicKey()
			srv, _ := nkeys.CreateServer()
			srvPub, _ := srv.PublicKey()
			rc := jwt.NewAuthorizationRequestClaims(srvPub)
			rc.Server.ID, rc.UserNkey = srvPub, pub
			ev := &audit.Event{Kind: "connect", Result: audit.DenyText}
			if _, err := s.decide(t.Context(), rc, ev, ""); err != nil {
				t.Fatal(err)
			}
			var got []string
			for deadline := time.Now().Add(2 * time.Second); ; time.Sleep(5 * time.Millisecond) {
				got = got[:0]
				for _, e := range tr.events() {
					got = append(got, e.Kind+" "+e.Result+" "+fmtRoles(e.Roles))
				}
				if len(got) >= len(tc.want) || time.Now().After(deadline) {
					break
				}
			}
			slices.Sort(got)
			want := slices.Sorted(slices.Values(tc.want))
			if !slices.Equal(got, want) {
				t.Fatalf("trail %q, want %q", got, want)
			}
		})
	}
}

func fmtRoles(r []string) string { return "[" + strings.Join(r, " ") + "]" }
