package natsapi

import (
	"context"
	"fmt"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/tpmauthn/tpmauthn/api"
)

// RequesterName is the requester's session name as the callout granted it
// (enroll-token-<id>, enroll-host-<id>, workload@host/nkey), and false
// without the header.
func RequesterName(ctx context.Context) (string, bool) {
	r, ok := ctx.Value(requesterKey{}).(*requester)
	if !ok {
		return "", false
	}
	return r.NameTag, true
}

// maxLimitedSessions bounds the sessions a Limiter tracks: past it, the
// idlest are forgotten (they start again with a full burst).
const maxLimitedSessions = 4096

// Limiter bounds how fast each session may call an endpoint: a token bucket
// per session name, so that one enrollment session cannot fill a bucket of
// short-lived records (open enrollments, registration challenges) on its
// own. Requests without a session name share one bucket.
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
		name, _ := RequesterName(ctx)
		if !l.allow(name, time.Now()) {
			return nil, fmt.Errorf("%w: session %q", api.ErrRateLimited, name)
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
