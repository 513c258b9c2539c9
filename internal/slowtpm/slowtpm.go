// Package slowtpm gives swtpm a real TPM's latency: a TCP proxy in front of
// swtpm's command port that reads each TPM 2.0 command, forwards it, and
// holds the response until the command has taken as long as a real TPM's
// would — a lognormal draw per command code from a seeded generator, so a
// run's n-th TPM2_Sign takes the same time in every run.
//
// swtpm signs P-256 in under a millisecond; a real TPM takes ~200 ms at the
// median and ~600 ms at p95 (DESIGN.md). Tests and the bench harness put
// this proxy between the agent and swtpm to see what the agent does when its
// TPM is the bottleneck. It parses only the command header (TPM 2.0 Part 1
// §18.2: tag, size, command code) and is no mock: every command reaches
// swtpm and every response is swtpm's.
package slowtpm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/google/go-tpm/tpm2"
)

// headerSize is a TPM 2.0 command or response header: tag (2), size (4),
// command or response code (4).
const headerSize = 10

// maxMessage bounds a command or response; TPM 2.0 messages are a few KB.
const maxMessage = 1 << 16

// Latency is a lognormal distribution given by its median and 95th
// percentile. The zero value adds no delay.
type Latency struct {
	P50, P95 time.Duration
}

// z95 is the standard normal's 95th percentile.
const z95 = 1.6448536269514722

// sample draws one duration. Draws are capped at 3×P95: a real TPM's tail is
// long but bounded, and an unbounded draw would make a test's run time a
// matter of luck.
func (l Latency) sample(r *rand.Rand) time.Duration {
	if l.P50 <= 0 {
		return 0
	}
	if l.P95 <= l.P50 {
		return l.P50
	}
	sigma := math.Log(float64(l.P95)/float64(l.P50)) / z95
	d := time.Duration(float64(l.P50) * math.Exp(sigma*r.NormFloat64()))
	return min(d, 3*l.P95)
}

// Profile is a latency per command code, and one for every other command.
type Profile struct {
	Commands map[tpm2.TPMCC]Latency
	Other    Latency
}

func (p Profile) latency(cc tpm2.TPMCC) Latency {
	if l, ok := p.Commands[cc]; ok {
		return l
	}
	return p.Other
}

// RealTPM is a discrete TPM's latency for what the agent does on the
// connect path: TPM2_Sign with a P-256 key at ~200 ms median, ~600 ms p95
// (DESIGN.md, "Numbers that matter"). Key creation, loading and
// certification are slower than swtpm's too; context management and reads
// are milliseconds.
func RealTPM() Profile {
	return Profile{
		Commands: map[tpm2.TPMCC]Latency{
			tpm2.TPMCCSign:          {200 * time.Millisecond, 600 * time.Millisecond},
			tpm2.TPMCCCertify:       {200 * time.Millisecond, 600 * time.Millisecond},
			tpm2.TPMCCCreate:        {150 * time.Millisecond, 400 * time.Millisecond},
			tpm2.TPMCCCreatePrimary: {150 * time.Millisecond, 400 * time.Millisecond},
			tpm2.TPMCCLoad:          {30 * time.Millisecond, 60 * time.Millisecond},
			tpm2.TPMCCFlushContext:  {2 * time.Millisecond, 5 * time.Millisecond},
		},
		Other: Latency{5 * time.Millisecond, 15 * time.Millisecond},
	}
}

// Stat is what the proxy did for one command code.
type Stat struct {
	Count int
	Held  time.Duration // total time the commands took, swtpm's included
}

// Proxy is a running slow-TPM proxy. It serves any number of connections
// one after another, each to its own connection to swtpm (which serves one
// at a time).
type Proxy struct {
	ln     net.Listener
	target string

	mu      sync.Mutex
	rng     *rand.Rand
	profile Profile
	on      bool
	stats   map[tpm2.TPMCC]*Stat
	conns   map[net.Conn]struct{}
	closed  bool

	wg sync.WaitGroup
}

// Start listens on a free loopback port and proxies to target (swtpm's
// command port, host:port), delaying each command by profile with draws
// from seed. The delay is on from the start; see SetSlow.
func Start(target string, profile Profile, seed uint64) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("slowtpm: listen: %w", err)
	}
	p := &Proxy{ln: ln, target: target, rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)),
		profile: profile, on: true, stats: map[tpm2.TPMCC]*Stat{}, conns: map[net.Conn]struct{}{}}
	p.wg.Go(p.accept)
	return p, nil
}

// Addr is the proxy's host:port.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// URI is the address agent/tpm.Open understands.
func (p *Proxy) URI() string {
	_, port, _ := net.SplitHostPort(p.Addr())
	return "swtpm://127.0.0.1:" + port
}

// SetSlow turns the delay on or off. Off, commands pass straight through
// and draw nothing, so the draws of the slow part of a run do not depend on
// how many commands its set-up sent.
func (p *Proxy) SetSlow(on bool) {
	p.mu.Lock()
	p.on = on
	p.mu.Unlock()
}

// Stats returns what the proxy did, by command code, while slow.
func (p *Proxy) Stats() map[tpm2.TPMCC]Stat {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make(map[tpm2.TPMCC]Stat, len(p.stats))
	for cc, s := range p.stats {
		out[cc] = *s
	}
	return out
}

// Close stops the proxy and closes its connections.
func (p *Proxy) Close() error {
	p.mu.Lock()
	p.closed = true
	for c := range p.conns {
		_ = c.Close()
	}
	p.mu.Unlock()
	err := p.ln.Close()
	p.wg.Wait()
	return err
}

func (p *Proxy) accept() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return // closed
		}
		p.wg.Go(func() { p.serve(c) })
	}
}

// track records a connection for Close; false once closed.
func (p *Proxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *Proxy) untrack(c net.Conn) {
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
	_ = c.Close()
}

// serve relays one client connection to a connection of its own to swtpm,
// one command at a time, until either side closes.
func (p *Proxy) serve(client net.Conn) {
	defer p.untrack(client)
	if !p.track(client) {
		return
	}
	up, err := net.DialTimeout("tcp", p.target, 5*time.Second)
	if err != nil {
		return // the client sees its connection close, as if swtpm were down
	}
	defer p.untrack(up)
	if !p.track(up) {
		return
	}
	for {
		cmd, err := readMessage(client)
		if err != nil {
			return
		}
		rsp, err := p.relay(up, cmd)
		if err != nil {
			return
		}
		if _, err := client.Write(rsp); err != nil {
			return
		}
	}
}

// relay sends one command to swtpm and returns its response once the
// command has taken its drawn latency (or swtpm's own, if longer).
func (p *Proxy) relay(up net.Conn, cmd []byte) ([]byte, error) {
	cc := tpm2.TPMCC(binary.BigEndian.Uint32(cmd[6:10]))
	hold := p.draw(cc)
	start := time.Now()
	if _, err := up.Write(cmd); err != nil {
		return nil, fmt.Errorf("slowtpm: write to swtpm: %w", err)
	}
	rsp, err := readMessage(up)
	if err != nil {
		return nil, fmt.Errorf("slowtpm: read from swtpm: %w", err)
	}
	time.Sleep(hold - time.Since(start))
	p.account(cc, time.Since(start))
	return rsp, nil
}

// draw is the latency of the next command with code cc, 0 while fast.
// Draws happen in command order, which the agent's one TPM queue makes the
// same from run to run.
func (p *Proxy) draw(cc tpm2.TPMCC) time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.on {
		return 0
	}
	return p.profile.latency(cc).sample(p.rng)
}

func (p *Proxy) account(cc tpm2.TPMCC, took time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.on {
		return
	}
	s := p.stats[cc]
	if s == nil {
		s = &Stat{}
		p.stats[cc] = s
	}
	s.Count++
	s.Held += took
}

// errBadSize: a header announces a size shorter than itself or beyond any
// TPM message; the stream cannot be followed any further.
var errBadSize = errors.New("slowtpm: message size out of range")

// readMessage reads one TPM command or response: the header, then the rest
// of the size it announces (TCP may split a message anywhere).
func readMessage(r io.Reader) ([]byte, error) {
	var hdr [headerSize]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err
	}
	size := binary.BigEndian.Uint32(hdr[2:6])
	if size < headerSize || size > maxMessage {
		return nil, fmt.Errorf("%w: %s", errBadSize, strconv.FormatUint(uint64(size), 10))
	}
	msg := make([]byte, size)
	copy(msg, hdr[:])
	if _, err := io.ReadFull(r, msg[headerSize:]); err != nil {
		return nil, err
	}
	return msg, nil
}
