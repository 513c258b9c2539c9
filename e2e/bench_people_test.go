package e2e

import (
	"bytes"
	"encoding/json"
	"net/http"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/internal/fleettest"
	"github.com/tpmauthn/tpmauthn/internal/oidctest"
)

// BenchmarkPeople measures a person's login (the OIDC round through the
// verifier and the in-process IdP; then the agent's registration of the
// person's TPM credential: key creation, certify, two verifier round trips)
// and the connect of a person's credential against a workload's on the same
// host and swtpm, alternated in blocks in the same run: the person's costs
// a look-up of the person and their roles from IdP groups.
func BenchmarkPeople(b *testing.B) {
	op := oidctest.Start(b, oidctest.User{ID: "u-dana", Username: "dana", Password: "pw", Name: "Dana", Email: "dana@example.com", Groups: []string{"developers"}})
	var mu sync.Mutex
	var decisions []time.Duration
	f := peopleFleetWith(b, op, personPolicy, func(f *fleettest.Fleet) {
		f.Config.OnDecision = func(d time.Duration, err error) {
			mu.Lock()
			decisions = append(decisions, d)
			mu.Unlock()
		}
	})
	h := f.NewHost(b)
	hc := unixHTTP(h.Socket)

	const logins = 3 // the agent allows a uid a burst of 3 logins
	var idp, agentReg []time.Duration
	var cred string
	for range logins {
		t0 := time.Now()
		res := loginGrantAt(b, f, op, "dana", "pw", h, uint32(os.Getuid()))
		t1 := time.Now()
		body, _ := json.Marshal(api.PersonLoginRequest{Grant: res.AccessToken})
		resp, err := hc.Post("http://agent"+api.AgentPathPersonLogin, "application/json", bytes.NewReader(body))
		if err != nil || resp.StatusCode != http.StatusOK {
			b.Fatalf("person login at the agent: %v %v", resp, err)
		}
		var dev api.PersonLoginResponse
		_ = json.NewDecoder(resp.Body).Decode(&dev)
		resp.Body.Close()
		idp, agentReg = append(idp, t1.Sub(t0)), append(agentReg, time.Since(t1))
		cred = dev.CredentialID
	}

	auth := h.Agent.Authenticator()
	wl, err := auth.Credentials()
	if err != nil {
		b.Fatal(err)
	}
	var workloadID, personID []byte
	for _, c := range wl {
		switch {
		case c.Name == "app":
			workloadID = c.ID
		case c.IDString() == cred:
			personID = c.ID
		}
	}
	if workloadID == nil || personID == nil {
		b.Fatal("credentials not found")
	}
	n := max(b.N, 300)
	connect := map[string][]time.Duration{}
	decided := map[string][]time.Duration{}
	for block := range 6 { // alternated: workload, person, workload, ...
		kind, id := "workload", workloadID
		if block%2 == 1 {
			kind, id = "person", personID
		}
		opts := append(credentialOptions(auth, id), nats.MaxReconnects(0))
		mu.Lock()
		decisions = decisions[:0]
		mu.Unlock()
		for range n / 3 {
			t0 := time.Now()
			nc, err := nats.Connect(f.URL(), opts...)
			if err != nil {
				b.Fatalf("%s connect: %v", kind, err)
			}
			connect[kind] = append(connect[kind], time.Since(t0))
			nc.Close()
		}
		mu.Lock()
		decided[kind] = append(decided[kind], decisions...)
		mu.Unlock()
	}
	i50, i99 := percentiles(idp)
	a50, a99 := percentiles(agentReg)
	w50, w99 := percentiles(connect["workload"])
	p50, p99 := percentiles(connect["person"])
	wd50, wd99 := percentiles(decided["workload"])
	pd50, pd99 := percentiles(decided["person"])
	m := map[string]float64{
		"login_idp_p50_ms": i50, "login_idp_p99_ms": i99, "login_agent_p50_ms": a50, "login_agent_p99_ms": a99,
		"connect_workload_p50_ms": w50, "connect_workload_p99_ms": w99, "connect_person_p50_ms": p50, "connect_person_p99_ms": p99,
		"decision_workload_p50_us": wd50 * 1000, "decision_workload_p99_us": wd99 * 1000,
		"decision_person_p50_us": pd50 * 1000, "decision_person_p99_us": pd99 * 1000,
	}
	for k, v := range m {
		b.ReportMetric(v, k)
	}
	writeBenchResult(b, "people", m)
	b.Logf("login: IdP round p50 %.1f p99 %.1f ms, agent registration p50 %.1f p99 %.1f ms | connect workload p50 %.2f p99 %.2f ms, person p50 %.2f p99 %.2f ms | decision workload p50 %.0f us, person p50 %.0f us",
		i50, i99, a50, a99, w50, w99, p50, p99, wd50*1000, pd50*1000)
}
