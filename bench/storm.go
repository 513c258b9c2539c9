package bench

import (
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"runtime/pprof"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/tpmauthn/tpmauthn/agent/client"
	"github.com/tpmauthn/tpmauthn/internal/freeport"
	"github.com/tpmauthn/tpmauthn/verifier"
)

// StormResult is one reconnect storm: n connected tpmauthn clients, the
// nats-server restarted on the same port, every client re-authorized.
type StormResult struct {
	Clients      int     `json:"clients"`
	ConnectS     float64 `json:"initial_connect_s"`
	ReauthS      float64 `json:"reauthorize_all_s"` // from the server's restart to the last client back
	Failures     int     `json:"failures"`          // clients not back within the timeout
	CalloutsPerS float64 `json:"callouts_per_s"`
	Busy         bool    `json:"busy_core,omitempty"` // a busy loop held one core
	Servers      int     `json:"servers,omitempty"`   // a cluster of this many (else one)
	// Each second after the restart: callouts the verifier answered and
	// shed (too late for their clients). A collapse shows as a falling
	// answered line with shedding.
	Answered []uint64 `json:"answered_per_s"`
	Shed     []uint64 `json:"shed_per_s"`
}

// stormServer runs the tpmauthn layout on a fixed port, JetStream in dir.
type stormServer struct {
	conf string
	srv  *server.Server
}

func (s *stormServer) start() error {
	opts, err := server.ProcessConfigFile(s.conf)
	if err != nil {
		return err
	}
	srv, err := quietServer(opts)
	if err != nil {
		return err
	}
	s.srv = srv
	return nil
}

func (s *stormServer) stop() error {
	s.srv.Shutdown()
	s.srv.WaitForShutdown()
	return nil
}

// fitsOneServer: the server's process holds a descriptor per client, and
// some for itself, JetStream and the verifier.
func fitsOneServer(n int) bool { return uint64(n+2000) <= fdLimit() }

func freeTCPPort() (int, error) { return freeport.Pick() }

// Storm connects n clients, restarts the server and times the return.
func Storm(dir string, n int) (*StormResult, error) { return storm(dir, n, false) }

// BusyStorm is Storm with a busy loop pinned to one core from the restart
// on.
func BusyStorm(dir string, n int) (*StormResult, error) { return storm(dir, n, true) }

// ClusterStorm is Storm on a cluster of two servers, both restarted: from
// tpmauthn-bench only (the second server and the clients are its child
// processes).
func ClusterStorm(dir string, n int) (*StormResult, error) {
	exe, ok := benchExe()
	if !ok {
		return nil, errors.New("a storm on two servers runs from tpmauthn-bench")
	}
	raiseFDLimit()
	return clusterStorm(dir, n, false, exe)
}

func storm(dir string, n int, busy bool) (*StormResult, error) {
	raiseFDLimit()
	if exe, ok := benchExe(); ok && !fitsOneServer(n) {
		return clusterStorm(dir, n, busy, exe)
	}
	port, err := freeTCPPort()
	if err != nil {
		return nil, err
	}
	ss, v, err := startTpmauthn(dir, "127.0.0.1:"+strconv.Itoa(port), 256)
	if err != nil {
		return nil, err
	}
	defer func() { ss.srv.Shutdown() }()
	defer v.Close()
	creds, err := writeFixture(v, n)
	if err != nil {
		return nil, err
	}
	res := &StormResult{Clients: n, Busy: busy}
	stop, err := startBusyIf(busy)
	if err != nil {
		return nil, err
	}
	defer stop()
	if exe, ok := benchExe(); ok {
		// Restart the server on the same port: every client reconnects
		// and is authorized again through the callout.
		return stormChildren(exe, []stormGroup{{ss.srv.ClientURL(), creds}}, ss.stop, ss.start, v, res)
	}
	if uint64(2*n+2000) > fdLimit() {
		return nil, fmt.Errorf("storm of %d clients needs them in a second process: run it from tpmauthn-bench", n)
	}
	start := time.Now()
	cl, err := connectClients(ss.srv.ClientURL(), creds)
	if err != nil {
		return nil, err
	}
	defer cl.close()
	res.ConnectS = time.Since(start).Seconds()
	// Restart the server on the same port: every client reconnects and is
	// authorized again through the callout.
	ss.srv.Shutdown()
	ss.srv.WaitForShutdown()
	restarted := time.Now()
	if err := ss.start(); err != nil {
		return nil, err
	}
	defer watchStorm(v, restarted, res)()
	deadline := time.Now().Add(90 * time.Second)
	for cl.back.Load() < int64(n) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	back := cl.back.Load()
	res.ReauthS = time.Since(restarted).Seconds()
	res.Failures = n - int(back)
	res.CalloutsPerS = float64(back) / res.ReauthS
	return res, nil
}

// clients are connected storm clients.
type clients struct {
	conns []*nats.Conn
	back  atomic.Int64 // reconnections
}

func (c *clients) close() {
	for _, nc := range c.conns {
		if nc != nil {
			nc.Close()
		}
	}
}

// connectClients connects one client per credential, 64 at a time.
func connectClients(url string, creds []*softCred) (*clients, error) {
	cl := &clients{conns: make([]*nats.Conn, len(creds))}
	var wg sync.WaitGroup
	sem := make(chan struct{}, 64)
	var failed atomic.Int64
	var firstErr atomic.Value
	for i, c := range creds {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			opts := append(client.ReconnectOptions(), // as a workload reconnects
				c.nkey(),
				nats.ReconnectHandler(func(*nats.Conn) { cl.back.Add(1) }),
				nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {}))
			// A handshake that outlives the server's first PING (2 s)
			// fails ("expected PONG, got PING"): on a loaded machine
			// under the race detector some of 64 concurrent initial
			// connects do. A workload retries; so does the harness,
			// three times, as client.Connect would.
			var nc *nats.Conn
			var err error
			for attempt := range 3 {
				if nc, err = nats.Connect(url, opts...); err == nil {
					break
				}
				time.Sleep(time.Duration(attempt+1) * 500 * time.Millisecond)
			}
			if err != nil {
				failed.Add(1)
				firstErr.CompareAndSwap(nil, err.Error())
				return
			}
			cl.conns[i] = nc
		}()
	}
	wg.Wait()
	if f := failed.Load(); f > 0 {
		cl.close()
		return nil, fmt.Errorf("storm: %d of %d initial connects failed; first: %v", f, len(creds), firstErr.Load())
	}
	return cl, nil
}

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

// watchStorm profiles the storm into $BENCH_CPUPROFILE and records the
// verifier's answered and shed callouts each second into res (printed as
// they come with BENCH_LOG set).
func watchStorm(v *verifier.Verifier, since time.Time, res *StormResult) (stop func()) {
	done, finished := make(chan struct{}), make(chan struct{})
	var prof *os.File
	if f := os.Getenv("BENCH_CPUPROFILE"); f != "" {
		var err error
		if prof, err = os.Create(f); err == nil {
			_ = pprof.StartCPUProfile(prof)
		}
		if secs, _ := strconv.Atoi(os.Getenv("BENCH_CPUPROFILE_S")); secs > 0 {
			time.AfterFunc(time.Duration(secs)*time.Second, pprof.StopCPUProfile) // just the start
		}
	}
	go func() {
		defer close(finished)
		t := time.NewTicker(time.Second)
		defer t.Stop()
		served, shed := v.Served(), v.Shed()
		for {
			select {
			case <-done:
				// The last, partial second: a small storm can be over
				// before the first tick.
				s, d := v.Served(), v.Shed()
				if s != served || d != shed {
					res.Answered, res.Shed = append(res.Answered, s-served), append(res.Shed, d-shed)
				}
				return
			case <-t.C:
				s, d := v.Served(), v.Shed()
				res.Answered, res.Shed = append(res.Answered, s-served), append(res.Shed, d-shed)
				if os.Getenv("BENCH_LOG") != "" {
					fmt.Fprintf(os.Stderr, "verifier: %4.1f s: %d answered, %d shed in the last second\n", time.Since(since).Seconds(), s-served, d-shed)
				}
				served, shed = s, d
			}
		}
	}()
	return func() {
		close(done)
		<-finished
		if prof != nil {
			pprof.StopCPUProfile()
			_ = prof.Close()
		}
	}
}
