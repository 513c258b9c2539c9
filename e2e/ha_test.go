package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/tpmauthn/tpmauthn/agent"
	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/audit"
	"github.com/tpmauthn/tpmauthn/internal/eventually"
	"github.com/tpmauthn/tpmauthn/internal/fleettest"
	"github.com/tpmauthn/tpmauthn/internal/swtpmtest"
	"github.com/tpmauthn/tpmauthn/verifier"
	"github.com/tpmauthn/tpmauthn/verifier/keys"
)

// TestEmbeddedClusterHA: three verifiers whose embedded servers form one
// JetStream cluster (mutual-TLS routes), as an operator grows the
// one-command default. Every bucket and the audit stream get three
// replicas; with one node gone the fleet still enrolls and connects, and
// status names the missing peer.
func TestEmbeddedClusterHA(t *testing.T) {
	sw := swtpmtest.New(t)
	ek := fleettest.EKCADir(t, sw)
	policy := fleettest.WritePolicy(t, time.Minute)
	dirs := []string{filepath.Join(t.TempDir(), "v0"), filepath.Join(t.TempDir(), "v1"), filepath.Join(t.TempDir(), "v2")}
	if _, _, err := keys.LoadOrCreate(dirs[0]); err != nil {
		t.Fatal(err)
	}
	for _, d := range dirs[1:] {
		if _, _, err := keys.LoadOrCreate(d); err != nil { // then overwritten: the fleet's keys
			t.Fatal(err)
		}
		fleettest.CopyKeys(t, dirs[0], d)
	}
	ports := []int{freePort(t), freePort(t), freePort(t)}
	vs := make([]*verifier.Verifier, 3)
	var wg sync.WaitGroup
	errs := make([]error, 3)
	for i := range dirs {
		var routes []string
		for j, p := range ports {
			if j != i {
				routes = append(routes, fmt.Sprintf("127.0.0.1:%d", p))
			}
		}
		v, err := verifier.New(verifier.Config{DataDir: dirs[i], NATSListen: "127.0.0.1:-1", EKCADir: ek, PolicyFile: policy,
			RPID: fleettest.RPID, ClusterListen: fmt.Sprintf("127.0.0.1:%d", ports[i]), ClusterRoutes: routes,
			Logger: fleettest.Logger(t, fmt.Sprintf("verifier%d", i))})
		if err != nil {
			t.Fatal(err)
		}
		vs[i] = v
		t.Cleanup(v.Close)
		wg.Go(func() { // a clustered JetStream is ready once its peers meet
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			errs[i] = v.Start(ctx)
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("verifier %d: %v", i, err)
		}
	}
	urls := make([]string, 3)
	for i, v := range vs {
		urls[i] = v.ClientURL()
	}
	op := fleettest.OperatorConn(t, dirs[1], urls[1])
	var st api.Status
	if code := fleettest.Admin(t, op, "status", nil, &st); code != "" {
		t.Fatal(code)
	}
	if len(st.Streams) != 9 {
		t.Fatalf("status reports %d streams, want the 8 buckets and the audit stream", len(st.Streams))
	}
	for _, s := range st.Streams {
		if s.Replicas != 3 || s.Leader == "" || len(s.Peers) != 2 || s.Error != "" {
			t.Fatalf("stream %+v: want 3 replicas, a leader and two peers", s)
		}
	}

	// The node the operator does not use goes away.
	vs[0].Close()
	// The buckets whose leader it was elect another: writes come back
	// within seconds (the reliability target is 5 s with 2 of 3 servers).
	gone := time.Now()
	var tok api.TokenCreateResponse
	eventually.Until(t, 10*time.Second, func() error {
		if code := fleettest.Admin(t, op, "token.create", api.TokenCreateRequest{Roles: []string{"demo"}, TTL: time.Hour}, &tok); code != "" {
			return errors.New(code)
		}
		return nil
	})
	t.Logf("writes back %v after a node left", time.Since(gone).Round(time.Millisecond))
	h := fleettest.NewHost(t, sw, urls[1]+","+urls[2], tok.Token)
	for _, u := range urls[1:] {
		nc, err := nats.Connect(u, append(h.NATSOptions(t), nats.MaxReconnects(0))...)
		if err != nil {
			t.Fatalf("workload connect through %s with a node gone: %v", u, err)
		}
		nc.Close()
	}
	var after api.Status
	if code := fleettest.Admin(t, op, "status", nil, &after); code != "" {
		t.Fatal(code)
	}
	offline := 0
	for _, s := range after.Streams {
		for _, p := range s.Peers {
			if p.State != "current" {
				offline++
			}
		}
	}
	if offline == 0 {
		t.Fatalf("status after a node left: %+v, want a peer not current", after.Streams)
	}
	// Each server's callouts are answered by any verifier: every one of
	// them must know every server (none refused as an unknown issuer).
	var raw []audit.RawEvent
	if code := fleettest.Admin(t, op, "audit.read", api.AuditReadRequest{From: 1, Max: 1000}, &raw); code != "" {
		t.Fatal(code)
	}
	for _, r := range raw {
		if strings.Contains(string(r.Data), "not a server of this NATS system") {
			t.Fatalf("a fleet server's callout was refused: %s", r.Data)
		}
	}
	var got []string
	for _, s := range after.Streams[:1] {
		got = append(got, fmt.Sprintf("%s leader %s peers %+v", s.Stream, s.Leader, s.Peers))
	}
	t.Logf("%s", strings.Join(got, "; "))
}

// TestAgentWaitsForTheVerifier: an agent started while its verifier is
// down (a host booting before the verifier, a restart) waits and retries
// instead of exiting, and enrolls once the verifier is back.
func TestAgentWaitsForTheVerifier(t *testing.T) {
	port := freePort(t)
	f := fleettest.New(t, func(f *fleettest.Fleet) { f.Config.NATSListen = fmt.Sprintf("127.0.0.1:%d", port) })
	token := f.Token(t, time.Hour, "demo")
	url := f.URL()
	f.Verifier.Close()

	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokenFile, []byte(token), 0o600); err != nil {
		t.Fatal(err)
	}
	a, err := agent.New(agent.Config{TPM: f.TPM.URI(), NATSURL: url, DataDir: filepath.Join(dir, "agent"),
		Socket: filepath.Join(dir, "agent.sock"), TokenFile: tokenFile, Hostname: "early", Logger: fleettest.Logger(t, "agent")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = a.Close() })
	started := make(chan error, 1)
	go func() { started <- a.Start(t.Context()) }()
	select {
	case err := <-started:
		t.Fatalf("the agent's Start returned while the verifier was down: %v", err)
	case <-time.After(2 * time.Second): // it has tried, and waits
	}
	f.Start(t)
	select {
	case err := <-started:
		if err != nil {
			t.Fatalf("agent start once the verifier is back: %v", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("the agent did not enroll within 60 s of the verifier's return")
	}
}
