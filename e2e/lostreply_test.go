package e2e

import (
	"bytes"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/internal/fleettest"
	"github.com/tpmauthn/tpmauthn/verifier/record"
)

// replyDropper is a client connection to nats-server that, once armed,
// silently drops the first message delivered to the client whose payload
// holds match: a reply lost on the way, with the connection left up. It
// parses the server's protocol (MSG and HMSG frames; every other line passes
// through).
type replyDropper struct {
	net.Conn
	*dropRule
	mu  sync.Mutex
	raw []byte // read from the server, not yet parsed
	out []byte // parsed, for the client
}

// dropRule is shared by every connection a dropDialer makes (nats.go dials
// again on reconnect): one reply is dropped, on whichever carries it.
type dropRule struct {
	match   []byte
	armed   atomic.Bool
	dropped atomic.Bool
}

func (d *replyDropper) Read(p []byte) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for len(d.out) == 0 {
		buf := make([]byte, 32<<10)
		n, err := d.Conn.Read(buf)
		d.raw = append(d.raw, buf[:n]...)
		d.parse()
		if err != nil && len(d.out) == 0 {
			return 0, err
		}
	}
	n := copy(p, d.out)
	d.out = d.out[n:]
	return n, nil
}

// parse moves every complete frame of raw to out, except the one dropped.
func (d *replyDropper) parse() {
	for {
		eol := bytes.Index(d.raw, []byte("\r\n"))
		if eol < 0 {
			return
		}
		line := d.raw[:eol]
		frame := eol + 2
		if bytes.HasPrefix(line, []byte("MSG ")) || bytes.HasPrefix(line, []byte("HMSG ")) {
			f := bytes.Fields(line)
			size, err := strconv.Atoi(string(f[len(f)-1]))
			if err != nil {
				panic("replyDropper: bad frame " + string(line))
			}
			if len(d.raw) < frame+size+2 {
				return // the payload is still on its way
			}
			payload := d.raw[frame : frame+size]
			frame += size + 2
			if d.armed.Load() && bytes.Contains(payload, d.match) {
				d.armed.Store(false)
				d.dropped.Store(true)
				d.raw = d.raw[frame:]
				continue
			}
		}
		d.out = append(d.out, d.raw[:frame]...)
		d.raw = d.raw[frame:]
	}
}

type dropDialer struct{ rule *dropRule }

func (dd *dropDialer) Dial(network, address string) (net.Conn, error) {
	c, err := net.DialTimeout(network, address, 5*time.Second)
	if err != nil {
		return nil, err
	}
	return &replyDropper{Conn: c, dropRule: dd.rule}, nil
}

// TestRotationReplyLost: register.finish succeeds at the verifier but its
// reply never reaches the agent (the connection stays up). The agent must
// not delete the new key the verifier now holds as current: it waits out
// the reply, asks the verifier, and keeps the new credential.
func TestRotationReplyLost(t *testing.T) {
	// Parallel: it waits on cluster and store timeouts far more than it
	// computes (the suite's time budget, 12 minutes a package).
	t.Parallel()
	f := fleettest.New(t)
	h := f.NewHost(t)
	auth := h.Agent.Authenticator()
	who, hostCred, cur := rotationSubjects(t, h)
	drop := &dropRule{match: []byte(`"retires":`)}
	nc, err := nats.Connect(f.URL(), append(credentialOptions(auth, hostCred.ID), nats.SetCustomDialer(&dropDialer{drop}))...)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()

	drop.armed.Store(true)
	start := time.Now()
	next, _, err := auth.RotateWithVerifier(t.Context(), nc, cur)
	if !drop.dropped.Load() {
		t.Fatal("the register.finish reply was not dropped: the test did not test a lost reply")
	}
	if err != nil {
		t.Fatalf("rotation with its reply lost after %v: %v", time.Since(start).Round(time.Millisecond), err)
	}
	t.Logf("reply lost; rotation decided by the status check after %v", time.Since(start).Round(time.Millisecond))
	if _, err := auth.Credential(next.ID); err != nil {
		t.Fatalf("the new credential is not on the host: %v", err)
	}
	e, _ := auth.Enrollment()
	var cs []record.Credential
	f.MustAdmin(t, "credential.list", api.CredentialListRequest{Host: e.HostID}, &cs)
	for _, c := range cs {
		if c.Workload == who.Workload && c.ReplacedBy == "" && c.Status == api.CredentialActive && c.ID != next.IDString() {
			t.Fatalf("the verifier's current credential is %s, the agent kept %s", c.ID, next.IDString())
		}
	}
	// And the workload connects with it.
	nc2, err := nats.Connect(f.URL(), append(credentialOptions(auth, next.ID), nats.MaxReconnects(0))...)
	if err != nil {
		t.Fatalf("connect with the kept credential: %v", err)
	}
	nc2.Close()
}
