package main

import (
	"bufio"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
)

// errPeerUnknown: the loopback callback's peer socket is not in
// /proc/net/tcp{,6}, so its owner cannot be told: refused (fail closed).
var errPeerUnknown = errors.New("the owner of the connection cannot be determined")

// procRoot is where /proc is (a test seam).
var procRoot = "/proc"

// checkPeerUID is nil if the TCP connection from remote to local (this
// process's loopback listener) belongs to a socket owned by uid. Another
// local user can read the login URL (the browser's command line is in
// /proc/PID/cmdline) and send the listener their own login's code, or an
// error that ends the login: only the person's own browser (their uid) is
// listened to. Linux only; elsewhere nil (not checked).
func checkPeerUID(local, remote netip.AddrPort, uid int) error {
	if runtime.GOOS != "linux" {
		return nil
	}
	owner, err := tcpOwner(procRoot, local, remote)
	if err != nil {
		return err
	}
	if owner != uid {
		return fmt.Errorf("the connection is from uid %d, not yours (%d)", owner, uid)
	}
	return nil
}

// tcpOwner finds the peer's socket (local address remote, remote address
// local, as the peer sees it) in /proc/net/tcp and tcp6 and returns its
// uid.
func tcpOwner(proc string, local, remote netip.AddrPort) (int, error) {
	want := procAddr(remote) + " " + procAddr(local)
	want6 := procAddr6(remote) + " " + procAddr6(local)
	for _, f := range []string{"net/tcp", "net/tcp6"} {
		uid, err := scanTCP(filepath.Join(proc, f), want, want6)
		if err == nil {
			return uid, nil
		}
		if !errors.Is(err, errPeerUnknown) {
			return -1, err
		}
	}
	return -1, fmt.Errorf("%w: %s -> %s", errPeerUnknown, remote, local)
}

func scanTCP(path string, want ...string) (int, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return -1, errPeerUnknown
	}
	if err != nil {
		return -1, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid ...
		fs := strings.Fields(sc.Text())
		if len(fs) < 8 {
			continue
		}
		pair := fs[1] + " " + fs[2]
		for _, w := range want {
			if strings.EqualFold(pair, w) {
				return strconv.Atoi(fs[7])
			}
		}
	}
	if err := sc.Err(); err != nil {
		return -1, err
	}
	return -1, errPeerUnknown
}

// procAddr is an IPv4 address and port as /proc/net/tcp shows them: the
// address's 4 bytes as a native-endian (little-endian on every Linux port
// tpmauthn builds for) hex word, ':', the port in hex.
func procAddr(ap netip.AddrPort) string {
	a := ap.Addr().Unmap()
	if !a.Is4() {
		return ""
	}
	b := a.As4()
	return fmt.Sprintf("%08X:%04X", binary.LittleEndian.Uint32(b[:]), ap.Port())
}

// procAddr6 is the /proc/net/tcp6 form: four native-endian 32-bit words.
// An IPv4 peer of a dual-stack socket appears there as ::ffff:a.b.c.d.
func procAddr6(ap netip.AddrPort) string {
	b := ap.Addr().As16()
	var sb strings.Builder
	for i := 0; i < 16; i += 4 {
		var w [4]byte
		binary.LittleEndian.PutUint32(w[:], binary.BigEndian.Uint32(b[i:i+4]))
		sb.WriteString(strings.ToUpper(hex.EncodeToString(w[:])))
	}
	return fmt.Sprintf("%s:%04X", sb.String(), ap.Port())
}
