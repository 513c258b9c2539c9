package health

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/audit"
	"github.com/tpmauthn/tpmauthn/internal/eventually"
	"github.com/tpmauthn/tpmauthn/verifier/store"
)

// Policy-level fakes: the end-to-end behaviour is TestStoreWithoutQuorum.
type fakes struct {
	mu          sync.Mutex
	alerts      []string
	events      []audit.Event
	up          []bool
	probeErr    error
	probes      int
	unconfirmed int
}

func (f *fakes) Alert(kind string, _ audit.Event) {
	f.mu.Lock()
	f.alerts = append(f.alerts, kind)
	f.mu.Unlock()
}
func (f *fakes) Record(e audit.Event)          { f.mu.Lock(); f.events = append(f.events, e); f.mu.Unlock() }
func (f *fakes) StoreAvailable(up bool)        { f.mu.Lock(); f.up = append(f.up, up); f.mu.Unlock() }
func (f *fakes) StoreWriteFailureUnconfirmed() { f.mu.Lock(); f.unconfirmed++; f.mu.Unlock() }
func (f *fakes) Probe(context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.probes++
	return f.probeErr
}

func TestEpisode(t *testing.T) {
	defer func(d time.Duration) { probeEvery = d }(probeEvery)
	probeEvery = 10 * time.Millisecond
	f := &fakes{probeErr: fmt.Errorf("%w: no quorum", api.ErrUnavailable)}
	m := New(Config{Store: f, Alerts: f, Trail: f, Metrics: f})
	defer m.Close()

	m.Observe(errors.New("token invalid")) // says nothing about the store
	m.Observe(nil)
	if st := m.Now(); st.Status != "ok" {
		t.Fatalf("status %+v before any store error", st)
	}
	for range 5 { // one episode, however many requests fail in it
		m.Observe(fmt.Errorf("decide: %w", api.ErrUnavailable))
	}
	// It opens once the monitor's own write has failed too.
	eventually.Until(t, 5*time.Second, func() error {
		if st := m.Now(); st.Status != "store_unavailable" || st.Hint == "" || st.Since.IsZero() {
			return fmt.Errorf("status %+v during the episode", st)
		}
		return nil
	})
	rec := httptest.NewRecorder()
	m.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/healthz", nil))
	if rec.Code != http.StatusServiceUnavailable {
		t.Fatalf("/healthz %d during the episode, want 503", rec.Code)
	}
	eventually.Until(t, 5*time.Second, func() error { // it keeps probing
		f.mu.Lock()
		defer f.mu.Unlock()
		if f.probes < 3 {
			return errors.New("not probing")
		}
		return nil
	})
	f.mu.Lock()
	f.probeErr = nil // the store is back: the probe ends the episode without traffic
	f.mu.Unlock()
	eventually.Until(t, 5*time.Second, func() error {
		if st := m.Now(); st.Status != "ok" {
			return fmt.Errorf("status %+v", st)
		}
		return nil
	})
	rec = httptest.NewRecorder()
	m.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/healthz", nil))
	if rec.Code != http.StatusOK {
		t.Fatalf("/healthz %d after the episode, want 200", rec.Code)
	}
	f.mu.Lock()
	f.probeErr = fmt.Errorf("%w: no quorum", api.ErrUnavailable)
	f.mu.Unlock()
	m.Observe(fmt.Errorf("again: %w", api.ErrUnavailable)) // a second episode
	eventually.Until(t, 5*time.Second, func() error {
		if st := m.Now(); st.Status != "store_unavailable" {
			return fmt.Errorf("status %+v in the second episode", st)
		}
		return nil
	})
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.alerts) != 2 || f.alerts[0] != AlertStoreUnavailable {
		t.Fatalf("alerts %v, want one per episode", f.alerts)
	}
	if len(f.events) != 1 || f.events[0].Kind != "store.available" {
		t.Fatalf("audit %v, want the recovery", f.events)
	}
	if want := []bool{true, false, true, false}; fmt.Sprint(f.up) != fmt.Sprint(want) {
		t.Fatalf("gauge %v, want %v", f.up, want)
	}
}

// A grant's write that failed while the store takes writes (the verifier
// behind in a storm, a restart that lost the trail's ack for a moment) is
// no episode: no alert, no gauge, /healthz ok.
func TestFailureNotConfirmed(t *testing.T) {
	defer func(d time.Duration) { probeEvery = d }(probeEvery)
	probeEvery = 300 * time.Millisecond
	for _, tc := range []struct {
		name         string
		trailFailing time.Duration // the trail's appends fail this long after the grant's failure
	}{
		{"storeTakesWrites", 0},
		{"trailFailingInsideItsWindow", 50 * time.Millisecond},
		{"trailFailingLongerThanTheProbe", 1000 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, trail := &fakes{}, &trailState{}
			trail.set(tc.trailFailing > 0, nil)
			m := New(Config{Store: f, Alerts: f, Trail: f, Metrics: f, Audit: trail})
			defer m.Close()
			for range 50 {
				m.Observe(fmt.Errorf("grant: %w: context deadline exceeded", api.ErrUnavailable))
			}
			time.Sleep(tc.trailFailing)
			trail.set(false, nil)
			time.Sleep(3 * probeEvery)
			if st := m.Now(); st.Status != "ok" {
				t.Fatalf("status %+v", st)
			}
			f.mu.Lock()
			defer f.mu.Unlock()
			if len(f.alerts) != 0 || fmt.Sprint(f.up) != "[true]" {
				t.Fatalf("alerts %v, gauge %v: want none and [true]", f.alerts, f.up)
			}
			if f.probes == 0 || f.probes > 10 {
				t.Fatalf("%d probe writes for 50 failures, want a few", f.probes)
			}
			if f.unconfirmed == 0 || f.unconfirmed > f.probes {
				t.Fatalf("unconfirmed failures counted %d times (%d probes), want at least once", f.unconfirmed, f.probes)
			}
		})
	}
}

// trailState is the audit trail as the monitor sees it.
type trailState struct {
	mu          sync.Mutex
	failing     bool
	alerting    bool // failing for more than a reconnect
	unavailable error
}

func (s *trailState) Unavailable() error { s.mu.Lock(); defer s.mu.Unlock(); return s.unavailable }
func (s *trailState) Failing() bool      { s.mu.Lock(); defer s.mu.Unlock(); return s.failing }
func (s *trailState) Alerting() bool     { s.mu.Lock(); defer s.mu.Unlock(); return s.alerting }
func (s *trailState) set(failing bool, unavailable error) {
	s.mu.Lock()
	s.failing, s.unavailable = failing, unavailable
	s.mu.Unlock()
}

// TestEpisodeWaitsForTheTrail: the probe's KV write alone does not end an
// episode while the audit trail's appends fail — neither in the trail's
// first seconds (failing, not yet refusing grants) nor after — so one
// outage is one alert (the fault campaign saw an alert every probe when
// the KV write worked and the audit stream had no leader).
func TestEpisodeWaitsForTheTrail(t *testing.T) {
	defer func(d time.Duration) { probeEvery = d }(probeEvery)
	probeEvery = 10 * time.Millisecond
	for _, tc := range []struct {
		name        string
		unavailable error
	}{
		{"failingInsideItsWindow", nil},
		{"refusingGrants", fmt.Errorf("%w: appends have failed for 6s", api.ErrUnavailable)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// The store fails first, then takes writes again while the
			// trail still fails.
			f, trail := &fakes{probeErr: fmt.Errorf("%w: no quorum", api.ErrUnavailable)}, &trailState{}
			trail.set(true, tc.unavailable)
			m := New(Config{Store: f, Alerts: f, Trail: f, Metrics: f, Audit: trail})
			defer m.Close()
			m.Observe(fmt.Errorf("grant: %w", api.ErrUnavailable))
			eventually.Until(t, 5*time.Second, func() error { // confirmed: the store fails
				if st := m.Now(); st.Status != "store_unavailable" {
					return fmt.Errorf("status %+v", st)
				}
				return nil
			})
			f.mu.Lock()
			f.probeErr = nil
			f.mu.Unlock()
			f.mu.Lock()
			before := f.probes
			f.mu.Unlock()
			eventually.Until(t, 5*time.Second, func() error {
				f.mu.Lock()
				defer f.mu.Unlock()
				if f.probes < before+5 {
					return errors.New("not probing")
				}
				return nil
			})
			if st := m.Now(); st.Status != "store_unavailable" {
				t.Fatalf("episode ended while the trail fails: %+v", st)
			}
			trail.set(false, nil)
			eventually.Until(t, 5*time.Second, func() error {
				if st := m.Now(); st.Status != "ok" {
					return fmt.Errorf("status %+v", st)
				}
				return nil
			})
			f.mu.Lock()
			defer f.mu.Unlock()
			if len(f.alerts) != 1 {
				t.Fatalf("alerts %v, want one for the episode", f.alerts)
			}
		})
	}
}

// A store that is full says so, and what to do, not "check quorum".
func TestEpisodeStoreFull(t *testing.T) {
	defer func(d time.Duration) { probeEvery = d }(probeEvery)
	probeEvery = time.Hour // the test looks at the episode's start only
	f := &fakes{}
	m := New(Config{Store: f, Alerts: f, Trail: f, Metrics: f})
	defer m.Close()
	m.Observe(fmt.Errorf("decide: %w: %w: insufficient resources", api.ErrUnavailable, store.ErrFull))
	st := m.Now()
	if st.Status != "store_unavailable" || !strings.Contains(st.Reason, "store is full") || !strings.Contains(st.Hint, "max_file_store") {
		t.Fatalf("status %+v with the store full: want the reason and a hint that names max_file_store", st)
	}
}

// TestStoreFullSeenByTheTrail: when the audit trail's append is the first
// write to meet a full JetStream store, the monitor still reports the
// store's episode (alert, status, hint), not an audit-only failure — the
// fault campaign saw /healthz say audit_unavailable for a full store.
func TestStoreFullSeenByTheTrail(t *testing.T) {
	defer func(d time.Duration) { probeEvery = d }(probeEvery)
	probeEvery = time.Hour
	f, trail := &fakes{}, &trailState{}
	full := fmt.Errorf("audit trail unavailable: %w (insufficient resources)", store.ErrFull)
	trail.set(true, full)
	m := New(Config{Store: f, Alerts: f, Trail: f, Metrics: f, Audit: trail})
	defer m.Close()
	if st := m.Now(); st.Status != "store_unavailable" || !strings.Contains(st.Hint, "max_file_store") {
		t.Fatalf("status %+v with the store full as the trail saw it", st)
	}
	f.mu.Lock()
	if want := []bool{true, false}; fmt.Sprint(f.up) != fmt.Sprint(want) {
		t.Errorf("gauge %v once /healthz said store_unavailable, want %v", f.up, want)
	}
	f.mu.Unlock()
	m.Observe(fmt.Errorf("grant: %w", full)) // the connect path's refusal
	m.Now()
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.alerts) != 1 || f.alerts[0] != AlertStoreUnavailable {
		t.Fatalf("alerts %v, want store_unavailable once", f.alerts)
	}
}

// The trail refusing grants (past its window), or failing for more than a
// reconnect (no quorum: its own alert raised), confirms an episode even
// while the store's own write succeeds.
func TestTrailConfirms(t *testing.T) {
	defer func(d time.Duration) { probeEvery = d }(probeEvery)
	probeEvery = 20 * time.Millisecond
	for _, tc := range []struct {
		name        string
		alerting    bool
		unavailable error
	}{
		{"refusingGrants", false, fmt.Errorf("%w: appends have failed for 6s", api.ErrUnavailable)},
		{"failingNotForAReconnect", true, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, trail := &fakes{}, &trailState{}
			trail.set(true, tc.unavailable)
			trail.mu.Lock()
			trail.alerting = tc.alerting
			trail.mu.Unlock()
			m := New(Config{Store: f, Alerts: f, Trail: f, Metrics: f, Audit: trail})
			defer m.Close()
			m.Observe(fmt.Errorf("grant: %w", api.ErrUnavailable))
			eventually.Until(t, 5*time.Second, func() error {
				f.mu.Lock()
				defer f.mu.Unlock()
				if len(f.alerts) != 1 || f.alerts[0] != AlertStoreUnavailable {
					return fmt.Errorf("alerts %v", f.alerts)
				}
				return nil
			})
		})
	}
}
