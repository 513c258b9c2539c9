package e2e

import (
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tpmauthn/tpmauthn/internal/fleettest"
	"github.com/tpmauthn/tpmauthn/internal/oidctest"
	"github.com/tpmauthn/tpmauthn/internal/swtpmtest"
	"github.com/tpmauthn/tpmauthn/verifier/record"
)

// The test of issue 15 part 5 on real person credentials: a person logged
// in on two hosts (two TPMs) is deprovisioned by their IdP's SCIM client.

const scimTokenEnv = "TPMAUTHN_TEST_SCIM_OKTA"

// TestPersonOffboardedBySCIM: dana holds a TPM credential on each of two
// hosts, each with a live session. Okta's PATCH, Entra's PATCH shape and a
// DELETE each drop both sessions within a second, and neither credential
// connects again.
func TestPersonOffboardedBySCIM(t *testing.T) {
	requireRoot(t)
	const token = "okta-scim-e2e-0123456789abcdef"
	t.Setenv(scimTokenEnv, token)
	policy := strings.Replace(personPolicy, "client_secret_file: %q}]", "client_secret_file: %q, scim_token_env: "+scimTokenEnv+"}]", 1)
	for _, tc := range []struct{ name, method, body string }{
		{"oktaPatch", http.MethodPatch, `{"schemas":["urn:ietf:params:scim:api:messages:2.0:PatchOp"],"Operations":[{"op":"replace","value":{"active":false}}]}`},
		{"entraPatch", http.MethodPatch, `{"schemas":["urn:ietf:params:scim:api:messages:2.0:PatchOp"],"Operations":[{"op":"Replace","path":"active","value":"False"}]}`},
		{"delete", http.MethodDelete, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			op := oidctest.Start(t, oidctest.User{ID: "u-dana", Username: "dana", Password: "pw", Name: "Dana", Groups: []string{"developers"}})
			f := peopleFleetWith(t, op, policy)
			hosts := []*fleettest.Host{f.NewHost(t),
				fleettest.NewHost(t, swtpmtest.New(t, swtpmtest.SameManufacturer(f.TPM)), f.URL(), f.Token(t, time.Hour, "demo"))}
			var conns []*nats.Conn
			for _, h := range hosts {
				if st, body := personLoginAs(t, h, personUID, loginGrantAt(t, f, op, "dana", "pw", h, personUID).AccessToken); st != 200 {
					t.Fatalf("person login: %d %v", st, body)
				}
				nc, err := connectWorkload(t, f, h, personUID)
				if err != nil {
					t.Fatalf("connect: %v", err)
				}
				defer nc.Close()
				conns = append(conns, nc)
			}
			id := record.PersonID("okta", "u-dana")
			start := time.Now()
			dropped := watchClosed(conns)
			req, _ := http.NewRequestWithContext(t.Context(), tc.method, f.Verifier.HTTPURL()+"/scim/v2/okta/Users/"+id, strings.NewReader(tc.body))
			req.Header.Set("Authorization", "Bearer "+token)
			req.Header.Set("Content-Type", "application/scim+json")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			answered := time.Since(start)
			if resp.StatusCode/100 != 2 {
				t.Fatalf("SCIM %s: %s", tc.method, resp.Status)
			}
			select {
			case last := <-dropped:
				took := last.Sub(start)
				t.Logf("SCIM %s: both sessions dropped %v after the request was sent (SCIM answered after %v)", tc.name, took, answered)
				if took > time.Second {
					t.Errorf("last session dropped %v after the request, want within 1s", took)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("sessions still up 5 s after the deactivation")
			}
			for i, h := range hosts {
				if nc, err := connectWorkload(t, f, h, personUID); err == nil {
					nc.Close()
					t.Fatalf("host %d: the offboarded person's credential connected again", i)
				}
			}
		})
	}
}

// watchClosed sends the time the last of conns closed.
func watchClosed(conns []*nats.Conn) <-chan time.Time {
	out := make(chan time.Time, 1)
	var (
		mu   sync.Mutex
		last time.Time
		wg   sync.WaitGroup
	)
	for _, nc := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !nc.IsClosed() {
				time.Sleep(time.Millisecond)
			}
			now := time.Now()
			mu.Lock()
			if now.After(last) {
				last = now
			}
			mu.Unlock()
		}()
	}
	go func() {
		wg.Wait()
		out <- last
	}()
	return out
}
