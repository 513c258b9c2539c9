package agent

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/tpmauthn/tpmauthn/api"
	"go.uber.org/goleak"
)

// workerDone reports whether the queue's worker has returned, without
// waiting: close must have waited for it already.
func workerDone(q *tpmQueue) bool {
	select {
	case <-q.done:
		return true
	default:
		return false
	}
}

func TestQueueCloseStopsWorker(t *testing.T) {
	tests := []struct {
		name    string
		start   bool
		jobs    int
		closeBy int // how many times close is called
	}{
		{"started-idle", true, 0, 1},
		{"started-after-jobs", true, 3, 1},
		{"closed-twice", true, 1, 2},
		{"never-started", false, 0, 1},
		{"never-started-closed-twice", false, 0, 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
			q := newTPMQueue(4)
			if tc.start {
				q.start()
			}
			for i := range tc.jobs {
				if err := q.Do(t.Context(), "w", func() error { return nil }); err != nil {
					t.Fatalf("job %d: %v", i, err)
				}
			}
			for range tc.closeBy {
				q.close()
			}
			if tc.start && !workerDone(q) {
				t.Fatal("close returned while the worker still runs")
			}
			if err := q.Do(t.Context(), "w", func() error { return nil }); !errors.Is(err, errShuttingDown) {
				t.Fatalf("Do after close = %v, want errShuttingDown", err)
			}
			q.start() // must not revive a closed queue
			if q.started != tc.start {
				t.Fatal("start after close launched a worker")
			}
		})
	}
}

// TestQueueCloseWaitsForJobInFlight: close returns only once the job the
// worker runs has finished (the TPM is closed right after), and answers the
// jobs still waiting instead of running them.
func TestQueueCloseWaitsForJobInFlight(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	q := newTPMQueue(4)
	q.start()
	running, release := make(chan struct{}), make(chan struct{})
	inFlight := make(chan error, 1)
	go func() {
		inFlight <- q.Do(t.Context(), "a", func() error {
			close(running)
			<-release
			return nil
		})
	}()
	<-running
	waiting := make(chan error, 1)
	go func() {
		waiting <- q.Do(t.Context(), "b", func() error {
			t.Error("a job still waiting at close was run")
			return nil
		})
	}()
	for q.Depth() == 0 { // the second job is queued behind the first
		time.Sleep(time.Millisecond)
	}
	closed := make(chan struct{})
	go func() {
		q.close()
		close(closed)
	}()
	select {
	case <-closed:
		t.Fatal("close returned while a job was running")
	case <-time.After(50 * time.Millisecond):
	}
	close(release)
	<-closed
	if err := <-inFlight; err != nil {
		t.Fatalf("job in flight = %v, want nil", err)
	}
	if err := <-waiting; !errors.Is(err, errShuttingDown) {
		t.Fatalf("waiting job = %v, want errShuttingDown", err)
	}
	if !workerDone(q) {
		t.Fatal("close returned while the worker still runs")
	}
}

// TestQueueRefusesExpiredJob: a job whose deadline passed while it waited is
// answered with ErrDeadline, not run.
func TestQueueRefusesExpiredJob(t *testing.T) {
	q := newTPMQueue(4)
	q.start()
	defer q.close()
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	err := q.Do(ctx, "w", func() error {
		t.Error("an expired job was run")
		return nil
	})
	if !errors.Is(err, ErrDeadline) {
		t.Fatalf("Do(expired) = %v, want ErrDeadline", err)
	}
}

func TestTransient(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{&VerifierError{Code: api.CodeUnavailable}, true},
		{fmt.Errorf("enroll: %w", &VerifierError{Code: api.CodeUnavailable}), true},
		{&VerifierError{Code: api.CodeRateLimited}, true},
		{&VerifierError{Code: "token_invalid"}, false},
		{fmt.Errorf("connect: %w", nats.ErrNoServers), true},
		{fmt.Errorf("x: %w", nats.ErrNoResponders), true},
		{nats.ErrAuthorization, false},
		{errors.New("the NATS server's certificate chain has no CA with the pinned key"), false},
	} {
		if got := transient(tc.err); got != tc.want {
			t.Errorf("transient(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
	if retryDelay(0) != 500*time.Millisecond || retryDelay(100) != 30*time.Second {
		t.Fatalf("retryDelay: %v … %v", retryDelay(0), retryDelay(100))
	}
}
