package agent

import (
	"context"
	"errors"
	"sync"
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
// however many the other asks for; a turn given and not used expires, and
// its workload then holds one turn at a time.
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
	// a1's place is free, but a wasted a turn: it holds one at a time.
	if !given(chA[2]) || given(chA[3]) {
		t.Fatal("the unused turns did not free their places, or a, which wasted one, was given two")
	}
}

// TestTurnWaitsForRoomAndEnds: Turn returns once there is room, and with
// ErrDeadline when its context ends first.
func TestTurnWaitsForRoomAndEnds(t *testing.T) {
	q := learned(time.Second)
	fill(q, "b", 10) // 10 s of b's own work: no room
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

// given reports whether a turn was given on ch, without waiting.
func given(ch chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// TestTurnRoomIsPerWorkload: whether workload b gets a turn depends on its
// own jobs and turns, and on at most one job or turn a round of each other
// workload (the round-robin serves b's next job after one of each), so
// another workload's flood of signature requests or of turns does not shut
// b out. With nothing queued, promised or running, a turn is given however
// slow the estimate became. Jobs of 1 s, a tail of 1 s: 3.5 s of budget
// after the lead holds b's job and two ahead of it.
func TestTurnRoomIsPerWorkload(t *testing.T) {
	tests := []struct {
		name  string
		jobs  map[string]int // queued
		turns map[string]int // given, not used yet
		mean  time.Duration  // 0: 1 s, no deviation
		dev   float64        // seconds
		want  bool
	}{
		{"idle", nil, nil, 0, 0, true},
		{"other-sign-flood", map[string]int{"a": 20}, nil, 0, 0, true},
		{"other-turn-flood", nil, map[string]int{"a": 20}, 0, 0, true},
		{"two-other-floods", map[string]int{"a": 20}, map[string]int{"c": 20}, 0, 0, true},
		{"three-other-floods", map[string]int{"a": 20, "c": 20, "d": 20}, nil, 0, 0, false},
		{"own-backlog", map[string]int{"b": 3}, nil, 0, 0, false},
		{"own-turns", nil, map[string]int{"b": 3}, 0, 0, false},
		// A flood counts as many rounds as b has jobs ahead.
		{"own-one-other-flood", map[string]int{"a": 20, "b": 1}, nil, 0, 0, false},
		// Two stalls moved the estimate beyond the budget: an idle queue
		// still gives a turn, a busy one does not.
		{"idle-after-stall", nil, nil, 2 * time.Second, 1, true},
		{"busy-after-stall", map[string]int{"a": 1}, nil, 2 * time.Second, 1, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			q := learned(time.Second)
			if tc.mean > 0 {
				q.est.mean, q.est.dev = tc.mean.Seconds(), tc.dev
			}
			for w, n := range tc.jobs {
				fill(q, w, n)
			}
			for w, n := range tc.turns {
				for range n {
					q.turns.given[w] = append(q.turns.given[w], time.Now().Add(turnExpiry))
				}
			}
			ch := make(chan struct{})
			q.turns.add("b", ch)
			q.releaseTurns()
			if given(ch) != tc.want {
				t.Fatalf("b given a turn: %v, want %v", given(ch), tc.want)
			}
		})
	}
}

// TestTurnDespiteSignFlood: workload a keeps 16 signature requests queued
// on a TPM of ~200 ms a job (a queue of ~3 s, all of it a's); workload b
// still gets a turn, within a few of a's jobs.
func TestTurnDespiteSignFlood(t *testing.T) {
	q := learned(200 * time.Millisecond)
	q.est.dev = 0.05
	q.start()
	defer q.close()
	ctx, cancel := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	for range 16 {
		wg.Go(func() {
			for ctx.Err() == nil {
				jctx, jcancel := context.WithTimeout(ctx, 5*time.Second)
				if q.Do(jctx, "a", func() error { time.Sleep(200 * time.Millisecond); return nil }) != nil {
					time.Sleep(20 * time.Millisecond)
				}
				jcancel()
			}
		})
	}
	for q.Depth() < 10 {
		time.Sleep(10 * time.Millisecond)
	}
	tctx, tcancel := context.WithTimeout(t.Context(), 3*time.Second)
	defer tcancel()
	if err := q.Turn(tctx, "b"); err != nil {
		t.Fatalf("b's turn behind a's flood of %d jobs: %v", q.Depth(), err)
	}
}

// TestTurnsWastedLimitWorkload: a workload whose turns expired unused gets
// one turn at a time until it has used as many as it wasted; another
// workload is not affected.
func TestTurnsWastedLimitWorkload(t *testing.T) {
	q := learned(100 * time.Millisecond) // room for many turns
	take := func(w string, n int) (got int) {
		chs := make([]chan struct{}, n)
		for i := range chs {
			chs[i] = make(chan struct{})
			q.turns.add(w, chs[i])
		}
		q.releaseTurns()
		for _, ch := range chs {
			if given(ch) {
				got++
			} else {
				q.turns.remove(w, ch)
			}
		}
		return got
	}
	if got := take("a", 3); got != 3 {
		t.Fatalf("first: a given %d of 3 turns", got)
	}
	q.turns.expire(time.Now().Add(turnExpiry + time.Millisecond)) // never used
	if got := take("a", 3); got != 1 {
		t.Fatalf("after wasting 3: a given %d turns at once, want 1", got)
	}
	if got := take("b", 3); got != 3 {
		t.Fatalf("b given %d of 3 turns while a is limited", got)
	}
	for range 3 { // a uses its turns: the one outstanding, then one at a time
		if err := q.enqueue(&job{ctx: t.Context(), workload: "a", turn: true}); err != nil {
			t.Fatal(err)
		}
		if got := take("a", 1); got != 1 {
			t.Fatal("a given no turn after using its one")
		}
	}
	q.turns.arrived("a")
	if got := take("a", 3); got != 3 {
		t.Fatalf("after using as many as it wasted: a given %d of 3 turns", got)
	}
}

// TestTurnConsumedOnlyByAdmittedNATSSign: a turn given is counted until a
// NATS signature request of its workload is admitted to the queue; an
// assertion or a refused request leaves it counted.
func TestTurnConsumedOnlyByAdmittedNATSSign(t *testing.T) {
	for _, tc := range []struct {
		name     string
		turn     bool // a NATS signature
		full     bool // the workload's FIFO is full: refused
		consumed bool
	}{
		{"nats-admitted", true, false, true},
		{"nats-refused", true, true, false},
		{"assertion", false, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			q := learned(100 * time.Millisecond)
			q.perLoad = 1
			if tc.full {
				fill(q, "a", 1)
			}
			q.turns.given["a"] = []time.Time{time.Now().Add(turnExpiry)}
			err := q.enqueue(&job{ctx: t.Context(), workload: "a", turn: tc.turn})
			if (err != nil) != tc.full {
				t.Fatalf("enqueue = %v", err)
			}
			if consumed := len(q.turns.given["a"]) == 0; consumed != tc.consumed {
				t.Fatalf("turn consumed: %v, want %v", consumed, tc.consumed)
			}
		})
	}
}

// TestTurnRefusedPastDeadline: a turn request whose context has ended
// (a past Tpmauthn-Deadline) is refused and holds no turn, even on an idle
// queue that has room.
func TestTurnRefusedPastDeadline(t *testing.T) {
	for range 20 { // the old race between a turn given and the context's end
		q := learned(100 * time.Millisecond)
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		if err := q.Turn(ctx, "a"); !errors.Is(err, ErrDeadline) {
			t.Fatalf("Turn with an ended context = %v, want ErrDeadline", err)
		}
		if len(q.turns.given) != 0 {
			t.Fatal("a turn was given to a request whose deadline had passed")
		}
	}
}

// TestLoginLimiter: a uid gets a burst of three person logins, then waits;
// another uid is not held up by it; the host as a whole gets ten.
func TestLoginLimiter(t *testing.T) {
	l := newLoginLimiter()
	for i := range 3 {
		if !l.allow(1000) {
			t.Fatalf("login %d of uid 1000 refused", i+1)
		}
	}
	if l.allow(1000) {
		t.Fatal("a fourth login of uid 1000 at once was allowed")
	}
	n := 0
	for uid := uint32(2000); uid < 2020; uid++ {
		if l.allow(uid) {
			n++
		}
	}
	if n != 7 { // ten for the host, three taken
		t.Fatalf("%d logins of other uids allowed, want the host's remaining 7", n)
	}
}
