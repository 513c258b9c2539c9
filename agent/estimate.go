package agent

import "time"

// signEstimate follows how long a TPM job takes: an exponentially weighted
// mean and mean absolute deviation. A real TPM signs in ~200 ms at the
// median and ~600 ms at p95, swtpm in under a millisecond: the queue has to
// learn which one it drives before it can say how long a caller will wait.
type signEstimate struct {
	n         int
	mean, dev float64 // seconds
	over      bool    // the last job took longer than the tail
}

// estimateWeight is each new job's weight: about the last ten jobs count.
// The second of two jobs in a row far slower than the estimate allows
// (beyond its tail) weighs jumpWeight: a TPM that became slow (another user
// of the device, a throttled chip) must not be taken for a fast one for ten
// more jobs, while one stalled job (a pause of the agent's process: one took
// 1.7 s among 2 ms ones under the race detector) must not make it look slow.
// A job beyond the tail alone counts as one at the tail. A TPM that became
// fast costs only some pace until the estimate follows.
const (
	estimateWeight = 0.1
	jumpWeight     = 0.5
)

// tailDevs is how many deviations above the mean a job is assumed to take
// before it is started close to its deadline: for a real TPM's lognormal
// sign time (mean 250 ms, deviation 140 ms) that is ~1.1 s, beyond p99, so
// that a job the queue starts almost always finishes in time.
const tailDevs = 6

func (e *signEstimate) observe(d time.Duration) {
	s := d.Seconds()
	if e.n == 0 {
		e.mean, e.dev = s, s/2 // unknown spread: assume a wide one
	} else {
		diff := s - e.mean
		w := estimateWeight
		over := diff > tailDevs*e.dev
		switch {
		case over && e.over:
			w = jumpWeight
		case over: // one stall counts as a job at the tail, no more
			diff = tailDevs * e.dev
		}
		e.over = over
		e.mean += w * diff
		e.dev += w * (abs(diff) - e.dev)
	}
	e.n++
}

func abs(x float64) float64 {
	if x < 0 {
		return -x
	}
	return x
}

// known says whether any job was measured yet.
func (e *signEstimate) known() bool { return e.n > 0 }

// typical is a job's expected duration (0 while unknown).
func (e *signEstimate) typical() time.Duration { return seconds(e.mean) }

// cautious is a job's duration plus two deviations: what a line of jobs is
// assumed to take each when a wait over many of them must not run long,
// since their durations vary and slow ones come in streaks (measured: with
// one deviation, a streak of 660-760 ms signatures left three jobs of a
// 50-connection storm too little time) (0 while unknown).
func (e *signEstimate) cautious() time.Duration { return seconds(e.mean + 2*e.dev) }

// tail is the duration a job is assumed to need when it is started near its
// deadline (0 while unknown).
func (e *signEstimate) tail() time.Duration { return seconds(e.mean + tailDevs*e.dev) }

func seconds(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }
