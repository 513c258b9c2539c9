package natsapi

import (
	"context"
	"fmt"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/tpmauthn/tpmauthn/api"
)

// maxLimitedSessions bounds the sessions a Limiter tracks: past it, the
// idlest are forgotten (they start again with a full burst).
const maxLimitedSessions = 4096

// Limiter bounds how fast each caller may call an endpoint: a token bucket
// per scope (a host's agent, a join token's or an EK's session: Caller), so
// that one caller cannot fill a bucket of short-lived records (open
// enrollments, registration challenges) on its own, nor spend another's
// budget. Requests without a scope share one bucket.
type Limiter struct {
	every time.Duration
	burst int
	mu    sync.Mutex
	m     map[string]*limited
}

type limited struct {
	lim  *rate.Limiter
	used time.Time
}

// NewLimiter allows each session burst requests at once, then one every
// every.
func NewLimiter(every time.Duration, burst int) *Limiter {
	return &Limiter{every: every, burst: burst, m: map[string]*limited{}}
}

// Wrap refuses a session's request over its rate with api.ErrRateLimited,
// before h runs (so before anything is stored).
func (l *Limiter) Wrap(h Handler) Handler {
	return func(ctx context.Context, body []byte) (any, error) {
		s, _ := Caller(ctx)
		if !l.allow(s.Kind+"."+s.ID, time.Now()) {
			return nil, fmt.Errorf("%w: caller %s.%s", api.ErrRateLimited, s.Kind, s.ID)
		}
		return h(ctx, body)
	}
}

func (l *Limiter) allow(name string, now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	e := l.m[name]
	if e == nil {
		if len(l.m) >= maxLimitedSessions {
			l.evict()
		}
		e = &limited{lim: rate.NewLimiter(rate.Every(l.every), l.burst)}
		l.m[name] = e
	}
	e.used = now
	return e.lim.AllowN(now, 1)
}

// evict forgets the sessions idle long enough to have refilled their
// burst, or else the idlest one. Called with l.mu held.
func (l *Limiter) evict() {
	full := l.every * time.Duration(l.burst)
	var idlest string
	var oldest time.Time
	for k, e := range l.m {
		if time.Since(e.used) > full {
			delete(l.m, k)
			continue
		}
		if idlest == "" || e.used.Before(oldest) {
			idlest, oldest = k, e.used
		}
	}
	if len(l.m) >= maxLimitedSessions {
		delete(l.m, idlest)
	}
}
