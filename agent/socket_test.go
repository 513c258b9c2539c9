package agent

import (
	"bufio"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// A local user who can write the socket's directory swaps the fresh socket
// for a symlink to a file only root may read, hoping the root agent's
// chmod 0666 follows it. The agent never changes a mode through the final
// path: the victim keeps its mode, and the path ends up the agent's socket.
func TestAttackSocketChmodFollowsSymlink(t *testing.T) {
	dir := t.TempDir()
	victim := filepath.Join(dir, "shadow")
	if err := os.WriteFile(victim, []byte("secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "agent.sock")
	socketCreated = func(string) {
		_ = os.Remove(path)
		if err := os.Symlink(victim, path); err != nil {
			t.Error(err)
		}
	}
	t.Cleanup(func() { socketCreated = nil })
	ln, err := listenSocket(path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if fi, _ := os.Stat(victim); fi.Mode().Perm() != 0o600 {
		t.Fatalf("victim mode %v: the chmod followed the link", fi.Mode().Perm())
	}
	fi, err := os.Lstat(path)
	if err != nil || fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o666 {
		t.Fatalf("socket path: %v (%v), want a 0666 socket", fi.Mode(), err)
	}
	if ln.Addr().String() != path {
		t.Fatalf("listener address %s, want %s", ln.Addr(), path)
	}
	go func() {
		if c, err := ln.Accept(); err == nil {
			c.Close()
		}
	}()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatalf("dial the socket: %v", err)
	}
	c.Close()
	ln.Close()
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket left behind after Close: %v", err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Fatalf("directory holds %d entries after Close, want the victim only", len(entries))
	}
}

// One local user opens connections until the agent runs out of
// descriptors. The agent serves each uid at most maxConns at once: the
// next is closed unread, and a slot freed is served again.
func TestAttackSocketConnectionFlood(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.sock")
	inner, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	refused := make(chan uint32, 16)
	ln := limitPerUID(inner, 3, func(uid uint32) { refused <- uid })
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { // echo a line, hold the connection until the peer closes
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						c.Close()
						return
					}
					_, _ = io.WriteString(c, line)
				}
			}()
		}
	}()
	dial := func() (net.Conn, error) {
		c, err := net.Dial("unix", path)
		if err != nil {
			return nil, err
		}
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.WriteString(c, "ping\n"); err != nil {
			c.Close()
			return nil, err
		}
		if _, err := bufio.NewReader(c).ReadString('\n'); err != nil {
			c.Close()
			return nil, err
		}
		return c, nil
	}
	var held []net.Conn
	for i := range 3 {
		c, err := dial()
		if err != nil {
			t.Fatalf("connection %d within the cap: %v", i, err)
		}
		held = append(held, c)
	}
	if c, err := dial(); err == nil {
		c.Close()
		t.Fatal("a fourth connection of the same uid was served")
	}
	if uid := <-refused; uid != uint32(os.Getuid()) {
		t.Fatalf("refused uid %d, want %d", uid, os.Getuid())
	}
	held[0].Close()
	var c net.Conn
	for range 50 { // the server notices the close asynchronously
		if c, err = dial(); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("a freed slot is not served again: %v", err)
	}
	c.Close()
	for _, h := range held[1:] {
		h.Close()
	}
}

func TestUIDLimitIsPerUID(t *testing.T) {
	l := &uidLimitListener{maxConns: 2, open: map[uint32]int{}}
	for _, tc := range []struct {
		uid  uint32
		want bool
	}{{1000, true}, {1000, true}, {1000, false}, {0, true}, {1001, true}, {0, true}, {0, false}} {
		if got := l.take(tc.uid); got != tc.want {
			t.Fatalf("take(%d) = %v, want %v (open %v)", tc.uid, got, tc.want, l.open)
		}
	}
	l.give(1000)
	if !l.take(1000) {
		t.Fatal("a slot given back is not taken again")
	}
}
