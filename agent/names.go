package agent

import (
	"os/user"
	"strconv"
	"sync"
	"time"
)

// nameTTL is how long a uid's or gid's name is trusted without asking the
// name service again. Every request to the socket names its caller's user
// and group, and the name service is a cgo call that reads /etc/passwd and
// /etc/group (or asks sssd) each time: 30 µs of a 130 µs identification.
// Changing what a uid is named takes root (or the directory's
// administrator), and takes effect here within nameTTL: a person
// credential made for a renamed or reused uid is still refused, up to
// nameTTL later (docs/threat-model.md, H11).
const nameTTL = 5 * time.Second

// maxNames bounds a cache: a host's callers run as a handful of uids. Past
// it the cache starts over rather than growing with whatever uids a caller
// can run as.
const maxNames = 1024

// nameCache remembers the names a lookup gave, for nameTTL. Failures are
// not remembered: a name service that did not answer is asked again.
type nameCache struct {
	lookup func(id uint32) (string, error)
	now    func() time.Time
	mu     sync.Mutex
	names  map[uint32]cachedName
}

type cachedName struct {
	name  string
	until time.Time
}

func newNameCache(lookup func(uint32) (string, error)) *nameCache {
	return &nameCache{lookup: lookup, now: time.Now, names: map[uint32]cachedName{}}
}

// name is id's name, "" when the name service gives none (a bare id, or a
// lookup that failed: a selector by name then does not match).
func (c *nameCache) name(id uint32) string {
	now := c.now()
	c.mu.Lock()
	e, ok := c.names[id]
	c.mu.Unlock()
	if ok && now.Before(e.until) {
		return e.name
	}
	name, err := c.lookup(id)
	if err != nil || name == "" {
		return ""
	}
	c.mu.Lock()
	if len(c.names) >= maxNames {
		clear(c.names)
	}
	c.names[id] = cachedName{name: name, until: now.Add(nameTTL)}
	c.mu.Unlock()
	return name
}

func lookupUser(uid uint32) (string, error) {
	u, err := user.LookupId(strconv.FormatUint(uint64(uid), 10))
	if err != nil {
		return "", err
	}
	return u.Username, nil
}

func lookupGroup(gid uint32) (string, error) {
	g, err := user.LookupGroupId(strconv.FormatUint(uint64(gid), 10))
	if err != nil {
		return "", err
	}
	return g.Name, nil
}
