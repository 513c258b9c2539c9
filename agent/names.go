package agent

import (
	"os/user"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// nameTTL is how long a uid's or gid's name is trusted without asking the
// name service again, as long as the local file (/etc/passwd, /etc/group)
// has not changed either. Every request to the socket names its caller's
// user and group, and the name service is a cgo call that reads those files
// (or asks sssd) each time: 30 µs of a 130 µs identification. A change of
// the local file (useradd, userdel, usermod rename) is seen at the next
// request; one in a directory (LDAP through sssd, which caches for far
// longer itself) within nameTTL. Either takes root or the directory's
// administrator (docs/threat-model.md, "low: name cache").
const nameTTL = 5 * time.Second

// maxNames bounds a cache: a host's callers run as a handful of uids. Past
// it the cache starts over rather than growing with whatever uids a caller
// can run as.
const maxNames = 1024

// nameCache remembers the names a lookup gave, for nameTTL and while the
// local file they may come from is unchanged. Failures are not remembered:
// a name service that did not answer is asked again.
type nameCache struct {
	lookup func(id uint32) (string, error)
	file   string // /etc/passwd or /etc/group
	now    func() time.Time
	mu     sync.Mutex
	names  map[uint32]cachedName
}

type cachedName struct {
	name  string
	until time.Time
	file  fileStamp
}

// fileStamp names a file's content without reading it (the executables'
// hashes and the name caches are keyed by it). The mtime alone would not
// do: the file's owner can set it back after changing the file; the ctime
// changes with every write and cannot be set. The zero stamp is a file
// that could not be stat'ed, which never matches a cached name's.
type fileStamp struct {
	dev, ino         uint64
	size, mtim, ctim int64
}

func stampFromStat(st *unix.Stat_t) fileStamp {
	return fileStamp{dev: st.Dev, ino: st.Ino, size: st.Size, mtim: st.Mtim.Nano(), ctim: st.Ctim.Nano()}
}

func stampOf(path string) fileStamp {
	var st unix.Stat_t
	if path == "" || unix.Stat(path, &st) != nil {
		return fileStamp{}
	}
	return stampFromStat(&st)
}

func newNameCache(lookup func(uint32) (string, error), file string) *nameCache {
	return &nameCache{lookup: lookup, file: file, now: time.Now, names: map[uint32]cachedName{}}
}

// name is id's name, "" when the name service gives none (a bare id, or a
// lookup that failed: a selector by name then does not match).
func (c *nameCache) name(id uint32) string {
	now, file := c.now(), stampOf(c.file)
	c.mu.Lock()
	e, ok := c.names[id]
	c.mu.Unlock()
	if ok && now.Before(e.until) && file == e.file && file != (fileStamp{}) {
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
	c.names[id] = cachedName{name: name, until: now.Add(nameTTL), file: file}
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
