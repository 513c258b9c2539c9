package agent

import (
	"context"
	"errors"
	"testing"
	"time"
)

// learned is a queue that has measured jobs of d each (no deviation), with
// its worker stopped: tests fill its FIFOs by hand and ask what it would do.
func learned(d time.Duration) *tpmQueue {
	q := newTPMQueue(256)
	for range 20 {
		q.est.observe(d)
	}
	q.est.dev = 0
	return q
}

// fill puts n jobs of workload w in q's FIFO, as enqueue would.
func fill(q *tpmQueue, w string, n int) {
	for range n {
		if len(q.fifos[w]) == 0 {
			q.ring = append(q.ring, w)
		}
		q.fifos[w] = append(q.fifos[w], &job{ctx: context.Background(), workload: w})
		q.depth++
	}
}

func TestWaitForIsPerWorkload(t *testing.T) {
	const d = 100 * time.Millisecond
	tests := []struct {
		name  string
		queue map[string]int
		w     string
		want  time.Duration
	}{
		{"empty", nil, "b", 0},
		{"own-backlog", map[string]int{"b": 3}, "b", 3 * d},
		// a's flood of 200 costs b one job a round: b's first job waits for one.
		{"other-flood", map[string]int{"a": 200}, "b", d},
		{"other-flood-own-two", map[string]int{"a": 200, "b": 2}, "b", 2*d + 3*d},
		{"three-workloads", map[string]int{"a": 5, "c": 1}, "b", 2 * d},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			q := learned(d)
			for w, n := range tc.queue {
				fill(q, w, n)
			}
			if got := q.waitFor(tc.w); got != tc.want {
				t.Fatalf("waitFor(%s) = %v, want %v", tc.w, got, tc.want)
			}
		})
	}
}

// TestAdmitRefusesWhatCannotFinish: a request whose deadline the jobs ahead
// would pass is refused at once with ErrOverloaded and when to come back;
// one that fits, one without a deadline, and any before the first
// measurement are admitted; another workload's flood does not refuse it.
func TestAdmitRefusesWhatCannotFinish(t *testing.T) {
	const d = 200 * time.Millisecond
	tests := []struct {
		name    string
		learned bool
		queue   map[string]int
		left    time.Duration // 0: no deadline
		refused bool
	}{
		{"fits", true, map[string]int{"b": 5}, 4 * time.Second, false},
		{"own-backlog-too-long", true, map[string]int{"b": 30}, 4 * time.Second, true},
		{"other-flood-fits", true, map[string]int{"a": 250}, 4 * time.Second, false},
		{"no-deadline", true, map[string]int{"b": 30}, 0, false},
		{"not-learned-yet", false, map[string]int{"b": 30}, 4 * time.Second, false},
		// An estimate blown up by a stall must not refuse a lone request for good.
		{"nothing-ahead", true, nil, time.Millisecond, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			q := newTPMQueue(256)
			if tc.learned {
				q = learned(d)
			}
			for w, n := range tc.queue {
				fill(q, w, n)
			}
			ctx := context.Background()
			if tc.left > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, tc.left)
				defer cancel()
			}
			err := q.admit(&job{ctx: ctx, workload: "b"})
			var re *RetryError
			switch {
			case !tc.refused && err != nil:
				t.Fatalf("admit = %v, want admitted", err)
			case tc.refused && (!errors.Is(err, ErrOverloaded) || !errors.As(err, &re) || re.After < 2*time.Second):
				// 30 ahead at 200 ms is 6 s: it fits ~2 s later at the earliest.
				t.Fatalf("admit = %v, want ErrOverloaded with a retry after ≥ 2 s", err)
			}
		})
	}
}

// TestTooLate: at the head of the line a job with less time left than a
// job may take (the tail) is refused while others wait, not run; with its
// deadline far enough, before anything was measured, or alone, it runs.
func TestTooLate(t *testing.T) {
	for _, tc := range []struct {
		name    string
		learned bool
		others  bool // other jobs wait behind it
		left    time.Duration
		want    error
	}{
		{"too-close", true, true, 500 * time.Millisecond, ErrDeadline},
		{"in-time", true, true, time.Minute, nil},
		{"not-learned-yet", false, true, 500 * time.Millisecond, nil},
		{"passed", true, true, -time.Second, ErrDeadline},
		// Alone, it costs nobody, and its measurement keeps the estimate honest.
		{"too-close-alone", true, false, 500 * time.Millisecond, nil},
		{"passed-alone", true, false, -time.Second, ErrDeadline},
	} {
		t.Run(tc.name, func(t *testing.T) {
			q := newTPMQueue(4)
			if tc.learned {
				q = learned(time.Second)
			}
			if tc.others {
				fill(q, "other", 1)
			}
			ctx, cancel := context.WithTimeout(t.Context(), tc.left)
			defer cancel()
			if err := q.tooLate(&job{ctx: ctx, workload: "w"}); !errors.Is(err, tc.want) || (tc.want == nil) != (err == nil) {
				t.Fatalf("tooLate = %v, want %v", err, tc.want)
			}
		})
	}
}

// TestTurnsPacedAndRoundRobin: turns are given while the jobs coming fit in
// the budget and no more; a workload's turns alternate with another's
// however many the other asks for; a turn given and not used expires.
func TestTurnsPacedAndRoundRobin(t *testing.T) {
	q := learned(time.Second) // a tail of 1 s, 3.5 s of budget after the lead: 3 turns
	chA := make([]chan struct{}, 5)
	for i := range chA {
		chA[i] = make(chan struct{})
		q.turns.add("a", chA[i])
	}
	chB := make(chan struct{})
	q.turns.add("b", chB)
	q.releaseTurns()
	given := func(ch chan struct{}) bool {
		select {
		case <-ch:
			return true
		default:
			return false
		}
	}
	if !given(chA[0]) || !given(chB) || !given(chA[1]) || given(chA[2]) {
		t.Fatalf("first release: a0 %v b %v a1 %v a2 %v, want a0, b (before a's second) and a1",
			given(chA[0]), given(chB), given(chA[1]), given(chA[2]))
	}
	q.turns.arrived("a") // a0's request came and was queued: still 3 coming
	fill(q, "a", 1)
	q.releaseTurns()
	if given(chA[2]) {
		t.Fatal("a turn given while three jobs are coming")
	}
	q.turns.expire(time.Now().Add(turnExpiry + time.Millisecond)) // b and a1 never came
	q.releaseTurns()
	if !given(chA[2]) || !given(chA[3]) || given(chA[4]) {
		t.Fatal("the unused turns did not free their places, or freed too many")
	}
}

// TestTurnWaitsForRoomAndEnds: Turn returns once there is room, and with
// ErrDeadline when its context ends first.
func TestTurnWaitsForRoomAndEnds(t *testing.T) {
	q := learned(time.Second)
	fill(q, "a", 10) // 10 s of work: no room
	ctx, cancel := context.WithTimeout(t.Context(), 3*turnPoll)
	defer cancel()
	if err := q.Turn(ctx, "b"); !errors.Is(err, ErrDeadline) {
		t.Fatalf("Turn with no room = %v, want ErrDeadline", err)
	}
	if q.turns.waiting() != 0 {
		t.Fatal("a waiter whose context ended is still waiting")
	}
	q = learned(time.Second)
	if err := q.Turn(t.Context(), "b"); err != nil {
		t.Fatalf("Turn on an idle queue = %v", err)
	}
	q.close()
	if err := q.Turn(t.Context(), "b"); !errors.Is(err, errShuttingDown) {
		t.Fatalf("Turn after close = %v, want errShuttingDown", err)
	}
}

func TestSignEstimate(t *testing.T) {
	var e signEstimate
	if e.known() || e.tail() != 0 {
		t.Fatal("an estimate without samples")
	}
	e.observe(200 * time.Millisecond)
	if e.typical() != 200*time.Millisecond || e.tail() <= e.typical() {
		t.Fatalf("after one sample: typical %v tail %v", e.typical(), e.tail())
	}
	for range 200 {
		e.observe(100 * time.Millisecond)
	}
	if d := e.typical() - 100*time.Millisecond; d > time.Millisecond || d < -time.Millisecond {
		t.Fatalf("typical %v after 200 samples of 100 ms", e.typical())
	}
	// One stalled job weighs as any other; the second in a row moves the
	// estimate half way: the TPM became slow.
	e.observe(time.Second)
	if e.typical() > 110*time.Millisecond {
		t.Fatalf("after one stall of 1 s: typical %v", e.typical())
	}
	e.observe(time.Second)
	if e.typical() < 500*time.Millisecond {
		t.Fatalf("after two jobs of 1 s: typical %v", e.typical())
	}
}
