package fleet

import (
	"sync"
	"time"
)

// Misses remembers, for a short while, look-ups that found nothing (an
// unknown credential ID, join token hash, allow-listed EK or host ID), so
// that a flood of CONNECTs repeating a bogus one costs no KV read each. An
// entry lives TTL; the instance that creates a record forgets its miss at
// once (Forget), and other instances' misses end with their TTL, so a just
// allowed EK may be refused for at most TTL there. The values the verifier
// or the agent choose at random (credential IDs, tokens, host IDs) cannot be
// looked up before they exist, except by someone who guessed them.
type Misses struct {
	ttl time.Duration
	max int
	now func() time.Time
	mu  sync.Mutex
	m   map[string]time.Time // key -> when the miss expires
}

// Defaults of the connect path's negative cache.
const (
	MissTTL = 5 * time.Second
	MaxMiss = 16384
)

// NewMisses keeps at most max misses, each for ttl.
func NewMisses(ttl time.Duration, max int) *Misses {
	return &Misses{ttl: ttl, max: max, now: time.Now, m: map[string]time.Time{}}
}

// Missed reports whether key was looked up in vain less than TTL ago.
func (c *Misses) Missed(key string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	exp, ok := c.m[key]
	if ok && c.now().After(exp) {
		delete(c.m, key)
		return false
	}
	return ok
}

// Miss records that key was not found.
func (c *Misses) Miss(key string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.now()
	if _, ok := c.m[key]; !ok && len(c.m) >= c.max {
		c.evict(now)
	}
	c.m[key] = now.Add(c.ttl)
}

// Forget drops key's miss: its record was just created.
func (c *Misses) Forget(key string) {
	c.mu.Lock()
	delete(c.m, key)
	c.mu.Unlock()
}

// evict drops the expired misses, or else the one closest to expiry (the
// oldest). Called with c.mu held.
func (c *Misses) evict(now time.Time) {
	var oldest string
	var first time.Time
	for k, exp := range c.m {
		if now.After(exp) {
			delete(c.m, k)
			continue
		}
		if oldest == "" || exp.Before(first) {
			oldest, first = k, exp
		}
	}
	if len(c.m) >= c.max {
		delete(c.m, oldest)
	}
}

// Keys of Misses outside this package: a join token by its hash, an
// allow-listed EK by its hash, a host by its ID.
func TokenMiss(hash string) string { return "token:" + hash }

// EKMiss is an EK hash's key in Misses.
func EKMiss(hash string) string { return "ek:" + hash }

// HostMiss is a host ID's key in Misses.
func HostMiss(id string) string { return "host:" + id }
