// Package freeport picks TCP ports for servers that tests start and
// restart on a fixed port (embedded nats-servers, swtpm, cluster routes).
//
// The usual trick, listening on :0 and closing, hands out a port from the
// kernel's ephemeral range, the same range every outgoing connection takes
// its source port from: with thousands of client connections in a test run,
// one of them can take the port before the server binds it ("address
// already in use", seen in TestStoreWithoutQuorum). Ports below that range
// are never given to outgoing connections, so this package picks those.
package freeport

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
)

// lowest is the lowest port handed out.
const lowest = 10000

// given are the ports handed out in this process: a port is free until its
// server binds it, so two picks before that could otherwise be the same
// (seen: a node's route port and another node's client port).
var (
	mu    sync.Mutex
	given = map[int]bool{}
)

// Pick returns a port on 127.0.0.1 that is free now and outside the
// kernel's ephemeral range.
func Pick() (int, error) {
	top := ephemeralLow() - 1
	for range 100 {
		p := lowest + rand.IntN(top-lowest+1)
		mu.Lock()
		seen := given[p]
		given[p] = true
		mu.Unlock()
		if seen {
			continue // handed out already: another draw
		}
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
		if err != nil {
			continue // taken: another draw
		}
		_ = l.Close()
		return p, nil
	}
	// No luck below the range: fall back to the kernel's choice.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("freeport: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// ephemeralLow is the bottom of the kernel's ephemeral port range (Linux's
// default 32768 where it cannot be read).
func ephemeralLow() int {
	const fallback = 32768
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return fallback
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return fallback
	}
	n, err := strconv.Atoi(f[0])
	if err != nil || n <= lowest+1000 {
		return fallback
	}
	return n
}
