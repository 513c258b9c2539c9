package bench

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/tpmauthn/tpmauthn/verifier"
)

// Storm clients run in a child process (tpmauthn-bench storm-clients) at a
// lower CPU priority, which connects them, says "ready", and says "back" once
// every client has reconnected. In a test binary they run in-process.

type childCred struct {
	ID []byte `json:"id"`
	D  []byte `json:"d"`
}

// StormClientsArg is the subcommand that runs storm clients.
const StormClientsArg = "storm-clients"

// stormGroup is one child process of storm clients and the servers they
// dial (a comma-separated list; nats.go picks among them at random).
type stormGroup struct {
	urls  string
	creds []*softCred
}

// stormChildren starts a child per group, waits until every client is
// connected, takes the servers down and up again and times the clients'
// return from the moment the servers start again.
func stormChildren(exe string, groups []stormGroup, down, up func() error, v *verifier.Verifier, res *StormResult) (*StormResult, error) {
	type line struct {
		child int
		text  string
		ok    bool
	}
	lines := make(chan line)
	total := 0
	start := time.Now()
	for i, g := range groups {
		file, err := writeChildCreds(g.creds, i)
		if err != nil {
			return nil, err
		}
		defer os.Remove(file)
		_, _, sc, stop, err := startChild(exe, StormClientsArg, g.urls, file)
		if err != nil {
			return nil, err
		}
		defer stop()
		go func() {
			for sc.Scan() {
				lines <- line{i, sc.Text(), true}
			}
			lines <- line{child: i}
		}()
		total += len(g.creds)
	}
	// A child says "ready", then "back 0" while the others connect.
	for ready := 0; ready < len(groups); {
		switch l := <-lines; {
		case l.ok && l.text == "ready":
			ready++
		case l.ok && l.text == "back 0":
		default:
			return nil, fmt.Errorf("storm clients %d: %q (see stderr)", l.child, l.text)
		}
	}
	res.ConnectS = time.Since(start).Seconds()
	if err := down(); err != nil {
		return nil, err
	}
	restarted := time.Now()
	if err := up(); err != nil {
		return nil, err
	}
	defer watchStorm(v, restarted, res)()
	// Each child prints "back N" as its clients return, the last when N is
	// all of them.
	back := make([]int, len(groups))
	sum, timeout := 0, time.After(90*time.Second)
	for sum < total {
		select {
		case l := <-lines:
			if !l.ok {
				return nil, fmt.Errorf("storm clients %d: ended early (see stderr)", l.child)
			}
			if _, err := fmt.Sscanf(l.text, "back %d", &back[l.child]); err != nil {
				return nil, fmt.Errorf("storm clients %d: %q", l.child, l.text)
			}
			sum = 0
			for _, b := range back {
				sum += b
			}
		case <-timeout:
			res.Failures = total - sum
			sum = total
		}
	}
	res.ReauthS = time.Since(restarted).Seconds()
	res.CalloutsPerS = float64(res.Clients-res.Failures) / res.ReauthS
	return res, nil
}

// writeChildCreds writes creds for child i to a temporary file.
func writeChildCreds(creds []*softCred, i int) (string, error) {
	list := make([]childCred, len(creds))
	for i, c := range creds {
		list[i] = childCred{ID: c.id, D: c.key.D.Bytes()}
	}
	b, err := json.Marshal(list)
	if err != nil {
		return "", err
	}
	file := filepath.Join(os.TempDir(), fmt.Sprintf("tpmauthn-storm-%d-%d.json", os.Getpid(), i))
	return file, os.WriteFile(file, b, 0o600)
}

// StormClientsMain runs in the child: args are the server URLs (comma
// separated) and the credential file.
func StormClientsMain(args []string) error {
	if len(args) != 2 {
		return errors.New("usage: storm-clients URLS FILE")
	}
	raiseFDLimit()
	// The clients stand in for a fleet's other machines: on the one machine
	// the benchmark has, they must not take the CPU from the server and the
	// verifier. Measured: 10,000 clients at equal priority took 17–22 s to
	// come back, at nice 10 11.6 s.
	if err := niceProcess(10); err != nil {
		return fmt.Errorf("lower the clients' priority: %w", err)
	}
	b, err := os.ReadFile(args[1])
	if err != nil {
		return err
	}
	var list []childCred
	if err := json.Unmarshal(b, &list); err != nil {
		return err
	}
	creds := make([]*softCred, len(list))
	for i, c := range list {
		k := &ecdsa.PrivateKey{D: new(big.Int).SetBytes(c.D)}
		k.Curve = elliptic.P256()
		k.X, k.Y = k.Curve.ScalarBaseMult(c.D) //nolint:staticcheck // rebuilding a key from its scalar
		creds[i] = &softCred{id: c.ID, key: k}
	}
	cl, err := connectClients(args[0], creds)
	if err != nil {
		return err
	}
	defer cl.close()
	fmt.Println("ready")
	reported := time.Now()
	// Progress: "back N" every 100 ms while it changes, the last with N = n.
	last := int64(-1)
	for {
		time.Sleep(20 * time.Millisecond)
		if b := cl.back.Load(); b != last && (b == int64(len(creds)) || time.Since(reported) > 100*time.Millisecond) {
			fmt.Printf("back %d\n", b)
			last, reported = b, time.Now()
			if b == int64(len(creds)) {
				break
			}
		}
	}
	time.Sleep(time.Hour) // the parent ends us
	return nil
}

// niceProcess sets the nice value of every thread of this process. On Linux
// setpriority(PRIO_PROCESS, 0) changes only the calling thread, and the Go
// runtime has started others already; threads started later inherit the
// value of the thread that starts them, so all of them end up niced.
func niceProcess(n int) error {
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return err
	}
	for _, t := range tasks {
		tid, err := strconv.Atoi(t.Name())
		if err != nil {
			continue
		}
		if err := syscall.Setpriority(syscall.PRIO_PROCESS, tid, n); err != nil && !errors.Is(err, syscall.ESRCH) {
			return err
		}
	}
	return nil
}
