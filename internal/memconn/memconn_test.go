package memconn

import (
	"bytes"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// A write returns before the other end reads (a bare pipe's would not),
// and the other end gets every byte, in order.
func TestWriteReturnsAndKeepsOrder(t *testing.T) {
	a, z := net.Pipe()
	c := New(a)
	defer c.Close()
	var want bytes.Buffer
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range 1000 {
			p := bytes.Repeat([]byte{byte(i)}, i%97+1)
			want.Write(p)
			if _, err := c.Write(p); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	select {
	case <-done: // nothing read yet: the writes were buffered
	case <-time.After(10 * time.Second):
		t.Fatal("writes waited for the reader")
	}
	got := make([]byte, want.Len())
	if _, err := io.ReadFull(z, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want.Bytes()) {
		t.Fatal("the reader got other bytes, or in another order")
	}
}

// Beyond MaxBuffered a write waits for the reader, as a socket's does;
// Close ends the wait.
func TestBufferIsBounded(t *testing.T) {
	a, _ := net.Pipe()
	c := New(a)
	big := make([]byte, MaxBuffered)
	if _, err := c.Write(big); err != nil { // taken by the sender, which now waits for the pipe
		t.Fatal(err)
	}
	if _, err := c.Write(big); err != nil { // queued
		t.Fatal(err)
	}
	blocked := make(chan error, 1)
	go func() {
		_, err := c.Write([]byte("x"))
		blocked <- err
	}()
	select {
	case err := <-blocked:
		t.Fatalf("a write past the bound returned at once: %v", err)
	case <-time.After(200 * time.Millisecond):
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-blocked; !errors.Is(err, ErrClosed) {
		t.Fatalf("the waiting write after Close: %v", err)
	}
	if _, err := c.Write([]byte("y")); !errors.Is(err, ErrClosed) {
		t.Fatalf("a write after Close: %v", err)
	}
}

// A write the pipe refuses (the server closed its end) fails the writes
// after it.
func TestWriteErrorSticks(t *testing.T) {
	a, z := net.Pipe()
	c := New(a)
	defer c.Close()
	z.Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, err := c.Write([]byte("x"))
		if errors.Is(err, io.ErrClosedPipe) {
			return
		}
		if err != nil {
			t.Fatalf("write: %v, want io.ErrClosedPipe", err)
		}
		if time.Now().After(deadline) {
			t.Fatal("writes to a closed pipe kept succeeding")
		}
		time.Sleep(time.Millisecond)
	}
}

// A write that fails (here its deadline passes with nobody reading) ends
// the connection, so that its reader fails too and nats.go reconnects, as
// after a socket's failed write; before, the connection looked alive.
func TestFailedWriteEndsConnection(t *testing.T) {
	a, _ := net.Pipe()
	c := New(a)
	defer c.Close()
	if err := c.SetWriteDeadline(time.Now().Add(50 * time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write([]byte("PUB x 1\r\n")); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, io.ErrClosedPipe) {
		t.Fatalf("read after the failed write: %v, want the connection closed", err)
	}
	if _, err := c.Write([]byte("y")); err == nil {
		t.Fatal("write after the failed write succeeded")
	}
}

// Close sends what is queued before it closes, as a socket's close does
// (nats.go's Close flushes its last commands, then closes).
func TestCloseSendsQueued(t *testing.T) {
	a, z := net.Pipe()
	c := New(a)
	got := make(chan []byte)
	go func() { b, _ := io.ReadAll(z); got <- b }()
	if _, err := c.Write([]byte("UNSUB 1\r\n")); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if b := <-got; string(b) != "UNSUB 1\r\n" {
		t.Fatalf("the other end got %q", b)
	}
}

// A connection with nothing to send has no goroutine: nats.go drops a
// connection whose handshake failed without closing it.
func TestIdleHasNoGoroutine(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	a, z := net.Pipe()
	c := New(a)
	if _, err := c.Write([]byte("CONNECT {}\r\n")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(z, make([]byte, len("CONNECT {}\r\n"))); err != nil {
		t.Fatal(err)
	}
	if err := goleak.Find(ignore); err != nil {
		t.Fatalf("an idle connection kept a goroutine: %v", err)
	}
}
