package e2e

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/audit"
	"github.com/tpmauthn/tpmauthn/internal/eventually"
	"github.com/tpmauthn/tpmauthn/internal/fleettest"
	"github.com/tpmauthn/tpmauthn/verifier/health"
)

// storeFullMax is the nats-server's max_file_store in TestStoreFull: the
// bounded buckets reserve 64 MiB (open enrollments), 64 MiB (challenges)
// and 16 MiB (logins) when they are created, and the rest is what the
// fleet and the filler share.
const storeFullMax = 152 << 20

// TestStoreFull: the JetStream store of the fleet's nats-server fills up
// (an administrator's stream in the same account takes the space), so
// JetStream refuses every write. New connects are denied with a reason
// that says the store is full, the alert store_unavailable is published
// once, the gauge and /healthz say so, and a live session runs on; when the
// space is freed, connects are granted again by themselves, without a
// second alert.
func TestStoreFull(t *testing.T) {
	// Parallel: it waits on cluster and store timeouts far more than it
	// computes (the suite's time budget, 12 minutes a package).
	t.Parallel()
	logs := &syncBuffer{}
	f := fleettest.New(t, fleettest.RootMaxStore(storeFullMax), func(f *fleettest.Fleet) {
		f.Config.MetricsListen = "127.0.0.1:0"
		// An unbounded audit stream reserves nothing: the 1 GiB default
		// would not fit a store this small.
		f.Config.Audit.MaxBytes = -1
		f.Config.Logger = slog.New(slog.NewTextHandler(logs, nil))
	})
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("verifier log:\n%s", logs.String())
		}
	})
	h := f.NewHost(t)
	live, err := h.Connect(t)
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()
	echo, err := live.SubscribeSync("demo.live")
	if err != nil {
		t.Fatal(err)
	}
	var alerts atomic.Int64
	if _, err := f.Op.Subscribe("tpmauthn.alerts.store_unavailable", func(*nats.Msg) { alerts.Add(1) }); err != nil {
		t.Fatal(err)
	}
	metricsURL := "http://" + f.Verifier.MetricsAddr()
	if code, st := verifierHealthz(t, metricsURL); code != http.StatusOK {
		t.Fatalf("/healthz %d %+v before the fault", code, st)
	}

	l := &load{}
	stop := make(chan struct{})
	wg := l.run(t, h, 2, 100*time.Millisecond, stop)
	defer func() { close(stop); wg.Wait() }()
	eventually.Until(t, 30*time.Second, func() error {
		if l.granted.Load() < 3 {
			return errors.New("the load has no grants yet")
		}
		return nil
	})

	fillStart := time.Now()
	filled := fillStore(t, f.RootJS)
	s0 := l.snapshot() // the row counts from JetStream's first refusal
	t.Logf("filler: %d MiB written before JetStream refused: %v", filled.bytes>>20, filled.refusal)

	// Fail closed, visibly.
	eventually.Until(t, 30*time.Second, func() error {
		if code, st := verifierHealthz(t, metricsURL); code != http.StatusServiceUnavailable || st.Status != "store_unavailable" {
			return fmt.Errorf("/healthz %d %+v with the store full, want 503 store_unavailable", code, st)
		}
		return nil
	})
	code, st := verifierHealthz(t, metricsURL)
	if !strings.Contains(st.Reason, "store is full") || !strings.Contains(st.Hint, "max_file_store") {
		t.Errorf("/healthz %d %+v: want a reason that says the store is full and a hint that names max_file_store", code, st)
	}
	if v := scrapeGauge(t, metricsURL, "tpmauthn_store_available"); v != 0 {
		t.Errorf("tpmauthn_store_available = %v with the store full, want 0", v)
	}
	denied := l.denied.Load()
	eventually.Until(t, 30*time.Second, func() error {
		if l.denied.Load() < denied+5 {
			return fmt.Errorf("%d connects denied since the store was found full, want 5", l.denied.Load()-denied)
		}
		return nil
	})
	grantedDuring := l.granted.Load()
	// The fault lasts beyond the audit trail's fail-closed window (5 s):
	// probes fail, connects keep coming, and each is denied.
	time.Sleep(6 * time.Second)
	if g := l.granted.Load() - grantedDuring; g != 0 {
		t.Errorf("%d connects granted while the store was full", g)
	}
	// The live session runs on: its JWT was granted before the fault.
	if err := live.Publish("demo.live", []byte("still here")); err != nil {
		t.Fatal(err)
	}
	if _, err := echo.NextMsg(5 * time.Second); err != nil || !live.IsConnected() {
		t.Fatalf("the live session stopped working with the store full: %v (connected %v)", err, live.IsConnected())
	}

	// Free the space: the verifier's probe ends the episode by itself.
	if err := f.RootJS.DeleteStream(t.Context(), "FILLER"); err != nil {
		t.Fatal(err)
	}
	freed := time.Now()
	rec := l.recovered(t, freed, 60*time.Second)
	time.Sleep(time.Second) // as TestChaos counts a row: to a second past recovery
	s1 := l.snapshot()
	eventually.Until(t, 30*time.Second, func() error {
		if code, st := verifierHealthz(t, metricsURL); code != http.StatusOK {
			return fmt.Errorf("/healthz %d %+v after the space was freed", code, st)
		}
		return nil
	})
	if v := scrapeGauge(t, metricsURL, "tpmauthn_store_available"); v != 1 {
		t.Errorf("tpmauthn_store_available = %v after the space was freed, want 1", v)
	}
	time.Sleep(3 * time.Second) // connects go on: no second episode may start
	if n := alerts.Load(); n != 1 {
		t.Errorf("%d store_unavailable alerts for one episode, want 1", n)
	}

	// The reason, where an operator looks: the verifier's log, and the deny
	// events of the episode (the trail queues them while it has no room and
	// appends them when it has; repeats of one reason are one event with a
	// count). Some of the filler's last writes may have landed after the
	// store took its last write, so the window starts before the filler.
	const why = "store is full"
	if !strings.Contains(logs.String(), why) {
		t.Errorf("the verifier's log never says %q", why)
	}
	f.Verifier.FlushAudit()
	fullDenials, otherDenials := 0, 0
	for _, e := range trailEvents(t, f) {
		if !strings.HasPrefix(e.Kind, "connect") || e.Result != audit.DenyText || e.Time.Before(fillStart) {
			continue
		}
		if strings.Contains(e.Reason, why) {
			fullDenials++
		} else {
			otherDenials++
			t.Errorf("a connect denied while the store was full, for another reason: %q", e.Reason)
		}
	}
	if fullDenials == 0 {
		t.Error("no deny event in the audit trail names the full store")
	}
	t.Logf("deny events recorded for the episode: %d naming the full store, %d otherwise", fullDenials, otherDenials)
	logFault(t, "JetStream store full", s0, s1, rec)
}

type filled struct {
	bytes   int64
	refusal error
	at      time.Time // when JetStream first refused
}

// fillStore writes a stream of its own (an administrator's, in the
// fleet's account) until JetStream refuses a write for want of space, and
// returns what it wrote and the refusal.
func fillStore(t *testing.T, js jetstream.JetStream) filled {
	t.Helper()
	if _, err := js.CreateStream(t.Context(), jetstream.StreamConfig{Name: "FILLER", Subjects: []string{"filler.>"},
		Storage: jetstream.FileStorage, MaxBytes: -1}); err != nil {
		t.Fatalf("create the filler stream: %v", err)
	}
	chunk := make([]byte, 512<<10)
	var out filled
	for out.bytes < 2*storeFullMax {
		_, err := js.Publish(t.Context(), "filler.x", chunk)
		if err != nil {
			var apiErr *jetstream.APIError
			if !errors.As(err, &apiErr) || apiErr.Code != http.StatusServiceUnavailable {
				t.Fatalf("filler: %v, want JetStream's refusal for want of resources", err)
			}
			out.refusal, out.at = err, time.Now()
			return out
		}
		out.bytes += int64(len(chunk))
	}
	t.Fatalf("filler: %d MiB written to a store of %d MiB and JetStream still takes more", out.bytes>>20, storeFullMax>>20)
	return out
}

// verifierHealthz reads the verifier's /healthz.
func verifierHealthz(t *testing.T, base string) (int, health.Status) {
	t.Helper()
	resp, err := http.Get(base + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var st health.Status
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatalf("/healthz: %v", err)
	}
	return resp.StatusCode, st
}

// scrapeGauge reads one unlabelled metric from base/metrics.
func scrapeGauge(t *testing.T, base, name string) float64 {
	t.Helper()
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		var v float64
		if rest, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			if _, err := fmt.Sscan(rest, &v); err != nil {
				t.Fatalf("metric %s: %v", name, err)
			}
			return v
		}
	}
	t.Fatalf("metric %s not served", name)
	return 0
}

// trailEvents reads the whole audit trail, page by page (a page holds whole
// stream messages).
func trailEvents(t *testing.T, f *fleettest.Fleet) []audit.Event {
	t.Helper()
	var out []audit.Event
	for from := uint64(1); ; {
		var raw []audit.RawEvent
		f.MustAdmin(t, "audit.read", api.AuditReadRequest{From: from, Max: 1000}, &raw)
		if len(raw) == 0 {
			return out
		}
		for _, r := range raw {
			var e audit.Event
			if json.Unmarshal(r.Data, &e) == nil {
				out = append(out, e)
			}
			from = r.Msg + 1
		}
	}
}
