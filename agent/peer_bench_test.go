package agent

import (
	"testing"

	"golang.org/x/sys/unix"
)

// BenchmarkIdentify names the process at the other end of a Unix socket
// (SO_PEERCRED, pidfd, /proc before and after, user and group names), as
// every request to the agent's socket does; the baseline is SO_PEERCRED
// alone on the same connection.
func BenchmarkIdentify(b *testing.B) {
	uc := selfConn(b)
	pi := newPeerIdentifier()
	b.Run("Identify", func(b *testing.B) {
		for b.Loop() {
			if _, err := pi.identify(uc, bootTicks()); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("PeerCredOnly", func(b *testing.B) {
		raw, err := uc.SyscallConn()
		if err != nil {
			b.Fatal(err)
		}
		for b.Loop() {
			var cerr error
			if err := raw.Control(func(fd uintptr) {
				_, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
			}); err != nil || cerr != nil {
				b.Fatal(err, cerr)
			}
		}
	})
}
