package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
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
	"github.com/tpmauthn/tpmauthn/verifier/health"
	"github.com/tpmauthn/tpmauthn/verifier/keys"
	"github.com/tpmauthn/tpmauthn/verifier/store"
)

// TestEmbeddedClusterHA: three verifiers whose embedded servers form one
// JetStream cluster (mutual-TLS routes), as an operator grows the
// one-command default. Every bucket and the audit stream get three
// replicas; with one node gone the fleet still enrolls and connects, and
// status names the missing peer.
func TestEmbeddedClusterHA(t *testing.T) {
	// Parallel: it waits on cluster and store timeouts far more than it
	// computes (the suite's time budget, 12 minutes a package).
	t.Parallel()
	sw := swtpmtest.New(t)
	ek := fleettest.EKCADir(t, sw)
	policy := fleettest.WritePolicy(t, time.Minute)
	c := startCluster(t, ek, policy, nil)
	vs, dirs := c.vs, c.dirs
	urls := make([]string, 3)
	for i, v := range vs {
		urls[i] = v.ClientURL()
	}
	op := fleettest.OperatorConn(t, dirs[1], urls[1])
	var st api.Status
	if code := fleettest.Admin(t, op, "status", nil, &st); code != "" {
		t.Fatal(code)
	}
	if len(st.Streams) != len(store.Buckets)+1 {
		t.Fatalf("status reports %d streams, want the %d buckets and the audit stream", len(st.Streams), len(store.Buckets))
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

// cluster is three verifiers whose embedded servers form one JetStream
// cluster.
type cluster struct {
	vs   []*verifier.Verifier
	dirs []string
	cfgs []verifier.Config
}

// startCluster starts three verifiers at once (a clustered JetStream is
// ready once its peers meet); mod may change each one's config.
func startCluster(t *testing.T, ek, policy string, mod func(i int, c *verifier.Config)) *cluster {
	t.Helper()
	c := &cluster{}
	for i := range 3 {
		c.dirs = append(c.dirs, filepath.Join(t.TempDir(), fmt.Sprintf("v%d", i)))
		if _, _, err := keys.LoadOrCreate(c.dirs[i]); err != nil {
			t.Fatal(err)
		}
		if i > 0 { // the fleet's keys, as an operator copies them
			fleettest.CopyKeys(t, c.dirs[0], c.dirs[i])
		}
	}
	ports := []int{freePort(t), freePort(t), freePort(t)}
	for i := range 3 {
		var routes []string
		for j, p := range ports {
			if j != i {
				routes = append(routes, fmt.Sprintf("127.0.0.1:%d", p))
			}
		}
		// Fixed client ports: a restarted node is where clients' URL lists say.
		cfg := verifier.Config{DataDir: c.dirs[i], NATSListen: fmt.Sprintf("127.0.0.1:%d", freePort(t)), EKCADir: ek, PolicyFile: policy,
			RPID: fleettest.RPID, ClusterListen: fmt.Sprintf("127.0.0.1:%d", ports[i]), ClusterRoutes: routes,
			Logger: fleettest.Logger(t, fmt.Sprintf("verifier%d", i))}
		if mod != nil {
			mod(i, &cfg)
		}
		c.cfgs = append(c.cfgs, cfg)
	}
	c.vs = make([]*verifier.Verifier, 3)
	errs := make([]error, 3)
	var wg sync.WaitGroup
	for i := range 3 {
		wg.Go(func() { c.vs[i], errs[i] = c.start(t, i) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("verifier %d: %v", i, err)
		}
	}
	return c
}

// start starts verifier i (again, after Close: same data dir and route).
func (c *cluster) start(t *testing.T, i int) (*verifier.Verifier, error) {
	v, err := verifier.New(c.cfgs[i])
	if err != nil {
		return nil, err
	}
	t.Cleanup(v.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	return v, v.Start(ctx)
}

// TestStoreWithoutQuorum: two of three nodes gone, the fleet store cannot
// take writes. New connects are denied (fail closed) while live sessions
// run on, the verifier says so once (alert store_unavailable), in a gauge
// and on /healthz, and it recovers by itself when a node returns.
func TestStoreWithoutQuorum(t *testing.T) {
	// Parallel: it waits on cluster and store timeouts far more than it
	// computes (the suite's time budget, 12 minutes a package).
	t.Parallel()
	sw := swtpmtest.New(t)
	c := startCluster(t, fleettest.EKCADir(t, sw), fleettest.WritePolicy(t, time.Minute), func(i int, cfg *verifier.Config) {
		if i == 0 {
			cfg.MetricsListen = "127.0.0.1:0"
		}
	})
	v0 := c.vs[0]
	url := v0.ClientURL()
	op := fleettest.OperatorConn(t, c.dirs[0], url)
	var tok api.TokenCreateResponse
	if code := fleettest.Admin(t, op, "token.create", api.TokenCreateRequest{Roles: []string{"demo"}, TTL: time.Hour}, &tok); code != "" {
		t.Fatal(code)
	}
	h := fleettest.NewHost(t, sw, url, tok.Token)
	live, err := h.Connect(t)
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()
	alerts, err := op.SubscribeSync("tpmauthn.alerts.store_unavailable")
	if err != nil {
		t.Fatal(err)
	}
	healthz := func() (int, health.Status) {
		resp, err := http.Get("http://" + v0.MetricsAddr() + "/healthz")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var st health.Status
		_ = json.NewDecoder(resp.Body).Decode(&st)
		return resp.StatusCode, st
	}
	if code, st := healthz(); code != http.StatusOK {
		t.Fatalf("/healthz %d %+v before the fault", code, st)
	}

	c.vs[1].Close()
	c.vs[2].Close()
	lost := time.Now()
	denied := 0
	for range 3 {
		if nc, err := h.Connect(t); err == nil {
			nc.Close()
		} else {
			denied++
		}
	}
	if denied != 3 {
		t.Fatalf("%d of 3 connects denied without a store quorum, want all", denied)
	}
	// The episode opens once the monitor's own write confirms the denials
	// (within a second of the first).
	eventually.Until(t, 5*time.Second, func() error {
		if code, st := healthz(); code != http.StatusServiceUnavailable || st.Status != "store_unavailable" || st.Hint == "" {
			return fmt.Errorf("/healthz %d %+v without quorum, want 503 store_unavailable with a hint", code, st)
		}
		return nil
	})
	if _, err := alerts.NextMsg(5 * time.Second); err != nil {
		t.Fatalf("no store_unavailable alert: %v", err)
	}
	if m, err := alerts.NextMsg(500 * time.Millisecond); err == nil {
		t.Fatalf("a second alert in one episode: %s", m.Data)
	}
	if !live.IsConnected() {
		t.Fatal("a live session was dropped by the store's loss")
	}

	v1, err := c.start(t, 1) // quorum again
	if err != nil {
		t.Fatalf("restart a node: %v", err)
	}
	defer v1.Close()
	eventually.Until(t, 30*time.Second, func() error {
		if code, st := healthz(); code != http.StatusOK {
			return fmt.Errorf("/healthz %d %+v", code, st)
		}
		return nil
	})
	t.Logf("store back %v after quorum was lost", time.Since(lost).Round(time.Millisecond))
	eventually.Until(t, 10*time.Second, func() error {
		nc, err := h.Connect(t)
		if err != nil {
			return err
		}
		nc.Close()
		return nil
	})
}
