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
// goroutine hands the buffer to the pipe while there is something to send.
package memconn

import (
	"errors"
	"net"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
)

// MaxBuffered is how many bytes Write buffers before it waits for the
// pipe, as a socket's send buffer does when the reader falls behind.
const MaxBuffered = 4 << 20

// CloseDrain bounds how long Close waits for what is queued to reach the
// other end before it closes the pipe (a socket's close sends its unsent
// data too; nats.go's Close flushes its last commands, then closes).
const CloseDrain = time.Second

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
// addresses and deadlines are the underlying connection's (a write
// deadline bounds the queue's writes to it). A write the underlying
// connection refuses closes it, so that the reader sees the failure as a
// socket's would, and fails every later Write.
type Conn struct {
	net.Conn
	mu      sync.Mutex
	room    sync.Cond // room in the buffer, the queue sent, or the end
	queued  []byte
	spare   []byte // the last batch's buffer, for the next queue
	sending bool   // a sender goroutine runs
	closed  bool
	err     error
	senders sync.WaitGroup
}

// ErrClosed: Write after Close.
var ErrClosed = errors.New("memconn: connection closed")

// New buffers c's writes.
func New(c net.Conn) *Conn {
	b := &Conn{Conn: c}
	b.room.L = &b.mu
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
	if !b.sending {
		// A sender runs only while there is something to send: a
		// connection nats.go drops without closing (a failed handshake)
		// leaves no goroutine behind.
		b.sending = true
		b.senders.Add(1)
		go b.send()
	}
	return len(p), nil
}

// send hands what is queued to the connection, in order, one batch at a
// time, until the queue is empty; two buffers take turns, so the steady
// state allocates nothing.
func (b *Conn) send() {
	defer b.senders.Done()
	for {
		b.mu.Lock()
		if len(b.queued) == 0 || b.err != nil {
			b.sending = false
			b.room.Broadcast()
			b.mu.Unlock()
			return
		}
		batch := b.queued
		b.queued = b.spare[:0]
		b.room.Broadcast()
		b.mu.Unlock()

		if _, err := b.Conn.Write(batch); err != nil {
			b.mu.Lock()
			if b.err == nil {
				b.err = err
			}
			b.queued = nil
			b.room.Broadcast()
			b.mu.Unlock()
			// The pipe may hold part of a command now: end it, so that the
			// reader fails too and nats.go reconnects, as after a socket's
			// failed write.
			_ = b.Conn.Close()
			continue // ends the loop: err is set
		}
		b.mu.Lock()
		b.spare = batch
		b.mu.Unlock()
	}
}

// Close refuses further writes, waits up to CloseDrain for what is queued
// to be sent, and closes the connection.
func (b *Conn) Close() error {
	b.mu.Lock()
	b.closed = true
	b.room.Broadcast() // writers waiting for room give up
	timer := time.AfterFunc(CloseDrain, func() {
		b.mu.Lock()
		b.queued = nil // the reader is gone or stuck: give up on the rest
		b.mu.Unlock()
		_ = b.Conn.Close() // unblocks the sender's write
	})
	for b.sending {
		b.room.Wait()
	}
	b.mu.Unlock()
	timer.Stop()
	err := b.Conn.Close()
	b.senders.Wait()
	if errors.Is(err, net.ErrClosed) {
		err = nil // the drain timer closed it
	}
	return err
}
