package agent

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// H3: systemd_unit was read from any *.service in the cgroup path, so a
// user's own unit (systemd-run --user --unit=billing) or a directory in the
// user's delegated cgroup tree named billing.service passed for the system
// unit billing.service. Only a system unit's cgroup names a unit now.
func TestAttackUserUnitPosesAsSystemUnit(t *testing.T) {
	for _, tc := range []struct {
		name, cgroup, want string
	}{
		{"systemService", "0::/system.slice/billing.service", "billing.service"},
		{"systemScope", "0::/machine.slice/libpod-1234.scope", "libpod-1234.scope"},
		{"customSlice", "0::/apps.slice/billing.service", "billing.service"},
		// A delegated unit's sub-cgroups stay that unit's.
		{"delegatedSubCgroup", "0::/system.slice/ci.service/billing.service", "ci.service"},
		{"userUnit", "0::/user.slice/user-1000.slice/user@1000.service/app.slice/billing.service", ""},
		{"userScope", "0::/user.slice/user-1000.slice/session-3.scope", ""},
		{"userManagerElsewhere", "0::/system.slice/user@1000.service/billing.service", ""},
		{"root", "0::/", ""},
		{"cgroupV1Only", "1:name=systemd:/system.slice/billing.service", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := filepath.Join(t.TempDir(), "cgroup")
			if err := os.WriteFile(f, []byte(tc.cgroup+"\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			if got := systemdUnit(f); got != tc.want {
				t.Fatalf("systemdUnit(%s) = %q, want %q", tc.cgroup, got, tc.want)
			}
		})
	}
}

// H2: an exe or exe_sha256 selector alone named any process that connects
// and then execs the program (pid and start time survive execve). Such a
// configuration is refused, saying what to add.
func TestAttackExecSwapExeOnlySelectorRefused(t *testing.T) {
	uid := uint32(1001)
	for _, tc := range []struct {
		name  string
		match Selector
		err   string // "" : accepted
	}{
		{"exeOnly", Selector{Exe: "/usr/local/bin/copilot"}, "cannot name a caller alone"},
		{"hashOnly", Selector{ExeSHA256: strings.Repeat("ab", 32)}, "cannot name a caller alone"},
		{"uidAndExe", Selector{UID: &uid, Exe: "/usr/local/bin/copilot"}, ""},
		{"unit", Selector{SystemdUnit: "billing.service"}, ""},
		{"group", Selector{Group: "billing"}, ""},
		{"empty", Selector{}, "needs at least one"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := validateWorkloads([]Workload{{Name: "w", Match: tc.match}})
			if (err == nil) != (tc.err == "") || (err != nil && !strings.Contains(err.Error(), tc.err)) {
				t.Fatalf("validate: %v, want %q", err, tc.err)
			}
		})
	}
}

// P6: the README's own recipe left the join token world-readable, and the
// agent read it as it was: anyone on the host could enroll a host of their
// own with it first. A token file every user can read is refused.
func TestAttackWorldReadableJoinToken(t *testing.T) {
	for _, tc := range []struct {
		name string
		mode os.FileMode
		ok   bool
	}{
		{"owner", 0o600, true},
		{"group", 0o640, true},
		{"world", 0o644, false},
		{"worldWritable", 0o602, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := filepath.Join(t.TempDir(), "join-token")
			if err := os.WriteFile(f, []byte("tpmauthn-join-x\n"), tc.mode); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(f, tc.mode); err != nil { // past the umask
				t.Fatal(err)
			}
			a := &Agent{cfg: Config{TokenFile: f}}
			tok, err := a.readToken()
			if tc.ok != (err == nil) || (tc.ok && tok != "tpmauthn-join-x") {
				t.Fatalf("mode %v: %q, %v; want ok=%v", tc.mode, tok, err, tc.ok)
			}
		})
	}
}

// Low finding: the executable-hash cache was keyed on the mtime, which the
// file's owner can set back after changing the file: the agent then named
// the new program by the old one's hash. The ctime, which nobody can set,
// is in the key now.
func TestAttackExeHashCacheWithMtimeReset(t *testing.T) {
	pi := newPeerIdentifier()
	f := filepath.Join(t.TempDir(), "prog")
	if err := os.WriteFile(f, []byte("trusted program"), 0o755); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(f)
	if err != nil {
		t.Fatal(err)
	}
	before, err := pi.exeHash(f)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(20 * time.Millisecond)                                         // a later ctime than the first write's
	if err := os.WriteFile(f, []byte("evil program!!!"), 0o755); err != nil { // same size
		t.Fatal(err)
	}
	if err := os.Chtimes(f, fi.ModTime(), fi.ModTime()); err != nil { // mtime set back
		t.Fatal(err)
	}
	after, err := pi.exeHash(f)
	if err != nil {
		t.Fatal(err)
	}
	if after == before {
		t.Fatal("the changed program is named by the old program's hash")
	}
}

// Low finding: keep-alive connections to the socket (0666: every local user
// may connect) were never closed. An idle one is closed now.
func TestAttackIdleSocketConnections(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "s.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := newSocketServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok") }),
		func(ctx context.Context, _ net.Conn) context.Context { return ctx }, 200*time.Millisecond)
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: agent\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	// Idle now: the server must close the connection within its timeout.
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Fatalf("an idle connection after 5 s: %v, want closed by the server", err)
	}
}

// Review finding: a connection's caller is the process that connected;
// a process holding its PID now but started after the connection was
// accepted (the connecting process exited, its PID was reused; pidfd_open
// then names the new process) is refused.
func TestAttackPIDReusedAfterAccept(t *testing.T) {
	c := selfConn(t)
	pi := newPeerIdentifier()
	if _, err := pi.identify(c, bootTicks()); err != nil {
		t.Fatalf("a caller started before the accept: %v", err)
	}
	// This process started after boot: as if the connection had been
	// accepted then, and its PID had been taken by this process since.
	if _, err := pi.identify(c, 0); !errors.Is(err, ErrPeerGone) {
		t.Fatalf("a caller started after the accept: %v, want ErrPeerGone", err)
	}
}

// selfConn is the accepted end of a Unix socket connection this process
// made to itself; both ends close with the test.
func selfConn(tb testing.TB) *net.UnixConn {
	tb.Helper()
	sock := filepath.Join(tb.TempDir(), "s.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		tb.Fatal(err)
	}
	defer ln.Close()
	go func() {
		if c, err := net.Dial("unix", sock); err == nil {
			defer c.Close()
			_, _ = c.Read(make([]byte, 1)) // until the accepted end closes
		}
	}()
	c, err := ln.AcceptUnix()
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = c.Close() })
	return c
}
