// Package memconn gives an in-process NATS connection (nats-server's
// InProcessConn, a net.Pipe) the one thing a socket has that a pipe lacks:
// a send buffer.
//
// A net.Pipe's Write returns only once the other end has read every byte.
// nats.go writes under its connection's lock (the flusher, and a publish
// whose buffer is full), so every publisher of the connection waits while
// the server's read loop is scheduled and reads. With many goroutines
// publishing at once (a verifier answering 256 callouts) that serialises
// them: measured, an in-process verifier then served fewer connects a
// second than one over loopback TCP, whose kernel buffer lets the write
// return at once. Here Write copies into a bounded buffer and returns; a
// goroutine of the connection's own hands the buffer to the pipe.
package memconn

import (
	"errors"
	"net"
	"sync"

	"github.com/nats-io/nats.go"
)

// MaxBuffered is how many bytes Write buffers before it waits for the
// pipe, as a socket's send buffer does when the reader falls behind.
const MaxBuffered = 4 << 20

// Provider wraps an in-process connection provider so that each
// connection it makes is buffered (Conn).
func Provider(p nats.InProcessConnProvider) nats.InProcessConnProvider {
	return provider{p}
}

type provider struct{ p nats.InProcessConnProvider }

func (p provider) InProcessConn() (net.Conn, error) {
	c, err := p.p.InProcessConn()
	if err != nil {
		return nil, err
	}
	return New(c), nil
}

// Conn is a net.Conn whose writes are buffered: Write returns once its
// bytes are queued, in order, for the underlying connection. Reads,
// addresses and read deadlines are the underlying connection's. A write
// that fails fails every later Write.
type Conn struct {
	net.Conn
	mu      sync.Mutex
	ready   sync.Cond // queued bytes to send, or closed
	room    sync.Cond // room in the buffer, or closed
	queued  []byte
	closed  bool
	err     error
	flushed chan struct{} // closed when the sender returns
}

// ErrClosed: Write after Close.
var ErrClosed = errors.New("memconn: connection closed")

// New buffers c's writes.
func New(c net.Conn) *Conn {
	b := &Conn{Conn: c, flushed: make(chan struct{})}
	b.ready.L, b.room.L = &b.mu, &b.mu
	go b.send()
	return b
}

// Write queues p for the connection. It waits only while MaxBuffered
// bytes are queued already.
func (b *Conn) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for len(b.queued) >= MaxBuffered && !b.closed && b.err == nil {
		b.room.Wait()
	}
	switch {
	case b.closed:
		return 0, ErrClosed
	case b.err != nil:
		return 0, b.err
	}
	b.queued = append(b.queued, p...)
	b.ready.Signal()
	return len(p), nil
}

// send hands what is queued to the connection, in order, one batch at a
// time; the two buffers take turns so that the steady state allocates
// nothing.
func (b *Conn) send() {
	defer close(b.flushed)
	var spare []byte
	for {
		b.mu.Lock()
		for len(b.queued) == 0 && !b.closed {
			b.ready.Wait()
		}
		if len(b.queued) == 0 { // closed, and all of it sent
			b.mu.Unlock()
			return
		}
		batch := b.queued
		b.queued = spare[:0]
		b.room.Broadcast()
		b.mu.Unlock()

		_, err := b.Conn.Write(batch)
		if err != nil {
			b.mu.Lock()
			b.err, b.queued = err, nil
			b.room.Broadcast()
			b.mu.Unlock()
			return
		}
		spare = batch
	}
}

// Close closes the connection; bytes still queued are dropped, as a
// socket's are when it is closed with unsent data.
func (b *Conn) Close() error {
	b.mu.Lock()
	b.closed, b.queued = true, nil
	b.ready.Broadcast()
	b.room.Broadcast()
	b.mu.Unlock()
	err := b.Conn.Close() // unblocks a Write to the pipe under way
	<-b.flushed
	return err
}
