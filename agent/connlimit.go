package agent

import (
	"errors"
	"net"
	"sync"

	"golang.org/x/sys/unix"
)

// maxConnsPerUID bounds one user's open connections to the socket (twice
// the TPM queue's depth: a busy workload never meets it). Every
// local user may connect; without a cap one could hold every descriptor
// the agent has (idle connections close after socketIdleTimeout, but a busy
// loop reopens them). Per uid, so one user's flood never locks out the
// workloads of another.
const maxConnsPerUID = 512

// uidLimitListener refuses (closes at once) a connection whose peer uid
// already holds maxConns open ones.
type uidLimitListener struct {
	net.Listener
	maxConns int
	onRefuse func(uid uint32)

	mu   sync.Mutex
	open map[uint32]int
}

func limitPerUID(ln net.Listener, maxConns int, onRefuse func(uid uint32)) *uidLimitListener {
	return &uidLimitListener{Listener: ln, maxConns: maxConns, onRefuse: onRefuse, open: map[uint32]int{}}
}

// Accept returns the next connection within its uid's cap.
func (l *uidLimitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		uid, err := peerUID(c)
		if err != nil { // fail closed: a caller we cannot name is not served
			_ = c.Close()
			continue
		}
		if !l.take(uid) {
			_ = c.Close()
			if l.onRefuse != nil {
				l.onRefuse(uid)
			}
			continue
		}
		return &countedConn{Conn: c, release: func() { l.give(uid) }}, nil
	}
}

func (l *uidLimitListener) take(uid uint32) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.open[uid] >= l.maxConns {
		return false
	}
	l.open[uid]++
	return true
}

func (l *uidLimitListener) give(uid uint32) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.open[uid]--; l.open[uid] <= 0 {
		delete(l.open, uid)
	}
}

// countedConn gives its slot back once, when closed.
type countedConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *countedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}

// Unwrap is the connection the peer credentials are read from.
func (c *countedConn) Unwrap() net.Conn { return c.Conn }

func peerUID(c net.Conn) (uint32, error) {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return 0, errors.New("not a unix socket connection")
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return 0, err
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return 0, err
	}
	if cerr != nil {
		return 0, cerr
	}
	return cred.Uid, nil
}
