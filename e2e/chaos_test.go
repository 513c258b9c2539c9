package e2e

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/audit"
	"github.com/tpmauthn/tpmauthn/internal/eventually"
	"github.com/tpmauthn/tpmauthn/internal/fleettest"
	"github.com/tpmauthn/tpmauthn/internal/swtpmtest"
)

// The fault campaign (make chaos; CI runs the first fault in make test):
// three verifiers whose embedded servers form one JetStream cluster, an
// agent on swtpm, and workloads reconnecting through it the whole time.
// Each fault prints one row: connects attempted, granted, denied and
// errored while it lasted, seconds until connects succeed again, and, for
// the whole campaign, fleet records lost and granted connects without an
// audit event. The faults are in-process: a node is stopped (its verifier
// and embedded server closed, as a crash of the process would, minus the
// half-written files a SIGKILL could leave: atomicfile covers those).

// grant names a granted connection: its server and its client ID there.
type grant struct {
	server string
	client uint64
}

type load struct {
	attempted, granted, denied, errored atomic.Int64
	mu                                  sync.Mutex
	grants                              []grant
	last                                time.Time
}

func (l *load) snapshot() [4]int64 {
	return [4]int64{l.attempted.Load(), l.granted.Load(), l.denied.Load(), l.errored.Load()}
}

// run connects and disconnects through the agent until stop closes, at
// most every period per worker.
func (l *load) run(t *testing.T, h *fleettest.Host, workers int, period time.Duration, stop <-chan struct{}) *sync.WaitGroup {
	opts := h.NATSOptions(t)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			tick := time.NewTicker(period)
			defer tick.Stop()
			for {
				select {
				case <-stop:
					return
				case <-tick.C:
				}
				l.attempted.Add(1)
				nc, err := nats.Connect(h.Config.NATSURL, append(opts, nats.MaxReconnects(0), nats.Timeout(3*time.Second))...)
				switch {
				case err == nil:
					cid, _ := nc.GetClientID()
					g := grant{nc.ConnectedServerId(), cid}
					nc.Close()
					l.granted.Add(1)
					l.mu.Lock()
					l.grants = append(l.grants, g)
					l.last = time.Now()
					l.mu.Unlock()
				case errors.Is(err, nats.ErrAuthorization):
					l.denied.Add(1)
				default:
					l.errored.Add(1)
				}
			}
		})
	}
	return &wg
}

// recovered waits until three more connects have been granted after since
// and returns how long that took.
func (l *load) recovered(t *testing.T, since time.Time, limit time.Duration) time.Duration {
	t.Helper()
	deadline := time.Now().Add(limit)
	start := l.granted.Load()
	for time.Now().Before(deadline) {
		l.mu.Lock()
		last := l.last
		l.mu.Unlock()
		if l.granted.Load() >= start+3 && last.After(since) {
			return last.Sub(since)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("connects not granted again within %v", limit)
	return 0
}

func TestChaos(t *testing.T) {
	if os.Getenv("TPMAUTHN_CHAOS") == "" {
		t.Skip("the fault campaign runs with make chaos (TPMAUTHN_CHAOS=1); make test covers node loss in TestEmbeddedClusterHA and TestStoreWithoutQuorum")
	}
	full := os.Getenv("TPMAUTHN_CHAOS") == "full"
	sw := swtpmtest.New(t)
	c := startCluster(t, fleettest.EKCADir(t, sw), fleettest.WritePolicy(t, time.Minute), nil)
	urls := make([]string, 3)
	for i, v := range c.vs {
		urls[i] = v.ClientURL()
	}
	op := fleettest.OperatorConn(t, c.dirs[0], strings.Join(urls, ","))
	var tok api.TokenCreateResponse
	if code := fleettest.Admin(t, op, "token.create", api.TokenCreateRequest{Roles: []string{"demo"}, TTL: time.Hour}, &tok); code != "" {
		t.Fatal(code)
	}
	h := fleettest.NewHost(t, sw, strings.Join(urls, ","), tok.Token)
	before := fleetCounts(t, op)

	l := &load{}
	stop := make(chan struct{})
	wg := l.run(t, h, 4, 80*time.Millisecond, stop) // ≈ 50 connects/s
	defer func() { close(stop); wg.Wait() }()
	time.Sleep(2 * time.Second)

	stopNode := func(i int) func(t *testing.T) {
		return func(t *testing.T) { c.vs[i].Close() }
	}
	restartNode := func(i int) func(t *testing.T) {
		return func(t *testing.T) {
			v, err := c.start(t, i)
			if err != nil {
				t.Fatalf("restart node %d: %v", i, err)
			}
			c.vs[i] = v
			// As an operator does before touching the next node: every
			// stream's replicas current again.
			eventually.Until(t, 90*time.Second, func() error { return allCurrent(t, op) })
		}
	}
	faults := []fault{{"node 2 stopped (2 of 3 up)", stopNode(2)}, {"node 2 back", restartNode(2)}}
	if full {
		faults = append(faults,
			fault{"node 1 stopped", stopNode(1)}, fault{"node 1 back", restartNode(1)},
			fault{"node 0 stopped", stopNode(0)}, fault{"node 0 back", restartNode(0)},
			fault{"rolling restart of all three", func(t *testing.T) {
				for i := range 3 {
					stopNode(i)(t)
					restartNode(i)(t)
				}
			}})
	}
	rows := runFaults(t, l, faults)
	close(stop)
	wg.Wait()
	stop = make(chan struct{}) // for the deferred close
	checkCampaign(t, op, l, before, rows)
}

// fault is one fault of a campaign: do makes it happen (and, for a
// return, waits until the fleet is whole again).
type fault struct {
	name string
	do   func(t *testing.T)
}

// faultHeader heads every fault table; make chaos prints it once.
const faultHeader = "| fault | connects attempted | granted | denied | errored | s to recovery |\n|---|---|---|---|---|---|"

// faultRow is a fault's row: what the load saw from s0 to s1.
func faultRow(name string, s0, s1 [4]int64, rec time.Duration) string {
	return fmt.Sprintf("| %s | %d | %d | %d | %d | %.1f |", name, s1[0]-s0[0], s1[1]-s0[1], s1[2]-s0[2], s1[3]-s0[3], rec.Seconds())
}

// logFault logs a single fault's table (a test that makes one fault).
func logFault(t *testing.T, name string, s0, s1 [4]int64, rec time.Duration) {
	t.Helper()
	t.Logf("\n%s\n%s", faultHeader, faultRow(name, s0, s1, rec))
}

// runFaults makes each fault in turn under l's load and returns the rows:
// recovery runs from the moment the fault is complete (the process gone,
// or back with every replica current) until three more grants.
func runFaults(t *testing.T, l *load, faults []fault) []string {
	t.Helper()
	var rows []string
	for _, f := range faults {
		s0 := l.snapshot()
		f.do(t)
		rec := l.recovered(t, time.Now(), 60*time.Second)
		time.Sleep(time.Second)
		rows = append(rows, faultRow(f.name, s0, l.snapshot(), rec))
	}
	return rows
}

// checkCampaign logs the table and fails the test for any fleet record
// lost since before, or any grant without its allow event. The load must
// have stopped.
func checkCampaign(t *testing.T, op *nats.Conn, l *load, before map[string]int, rows []string) {
	t.Helper()
	after := fleetCounts(t, op)
	lost := 0
	for k, n := range before {
		if after[k] < n {
			lost += n - after[k]
		}
	}
	missing := grantsWithoutEvent(t, op, l.grants)
	t.Logf("\n%s\n%s\n\nfleet records lost: %d; granted connects without an audit event: %d of %d",
		faultHeader, strings.Join(rows, "\n"), lost, len(missing), len(l.grants))
	if lost != 0 {
		t.Errorf("%d fleet records lost (before %v, after %v)", lost, before, after)
	}
	if len(missing) != 0 {
		t.Errorf("%d granted connects have no allow event in the audit trail (first: %+v)", len(missing), missing[0])
	}
}

// allCurrent says whether every bucket's and the audit stream's followers
// are current.
func allCurrent(t *testing.T, op *nats.Conn) error {
	var st api.Status
	if code := fleettest.Admin(t, op, "status", nil, &st); code != "" {
		return errors.New(code)
	}
	return streamsCurrent(st)
}

// streamsCurrent says whether every stream in st has two current followers.
func streamsCurrent(st api.Status) error {
	for _, s := range st.Streams {
		if s.Error != "" || len(s.Peers) != 2 {
			return fmt.Errorf("stream %s: %d peers, error %q", s.Stream, len(s.Peers), s.Error)
		}
		for _, p := range s.Peers {
			if p.State != "current" {
				return fmt.Errorf("stream %s: %s is %s", s.Stream, p.Name, p.State)
			}
		}
	}
	return nil
}

// fleetCounts counts hosts and credentials by status.
func fleetCounts(t *testing.T, op *nats.Conn) map[string]int {
	t.Helper()
	var st api.Status
	if code := fleettest.Admin(t, op, "status", nil, &st); code != "" {
		t.Fatal(code)
	}
	out := map[string]int{}
	for k, n := range st.Hosts {
		out["host "+k] = n
	}
	for k, n := range st.Credentials {
		out["credential "+k] = n
	}
	return out
}

// grantsWithoutEvent returns the grants with no allow event (same server,
// same client ID).
func grantsWithoutEvent(t *testing.T, op *nats.Conn, grants []grant) []grant {
	t.Helper()
	allowed := map[grant]int{}
	for from := uint64(1); ; {
		var raw []audit.RawEvent
		if code := fleettest.Admin(t, op, "audit.read", api.AuditReadRequest{From: from, Max: 1000}, &raw); code != "" {
			t.Fatal(code)
		}
		if len(raw) == 0 {
			break
		}
		for _, r := range raw {
			for _, line := range strings.Split(string(r.Data), "\n") {
				var e audit.Event
				if json.Unmarshal([]byte(line), &e) == nil && e.Kind == "connect" && e.Result == audit.Allow {
					allowed[grant{e.Server, e.Client}]++
				}
			}
			from = r.Msg + 1
		}
	}
	var missing []grant
	for _, g := range grants {
		if allowed[g] == 0 {
			missing = append(missing, g)
		}
	}
	return missing
}
