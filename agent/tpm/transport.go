package tpm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	"github.com/google/go-tpm/tpm2/transport"
	"github.com/google/go-tpm/tpm2/transport/linuxtpm"
)

// DefaultDevice is the kernel's resource-managed TPM device.
const DefaultDevice = "/dev/tpmrm0"

// maxResponse bounds a TPM response; TPM2 responses are far smaller.
const maxResponse = 1 << 16

// commandTimeout bounds one command on a network TPM. Real TPMs take up to
// seconds for RSA key generation; a hung connection must not block forever.
const commandTimeout = 2 * time.Minute

// openTransport turns a configuration string into a TPM transport:
//
//	""                    -> /dev/tpmrm0
//	/dev/tpmrm0, /dev/tpm0 -> a character device
//	swtpm://host:port      -> swtpm's raw TCP command port
func openTransport(addr string) (transport.TPMCloser, error) {
	if addr == "" {
		addr = DefaultDevice
	}
	if strings.HasPrefix(addr, "/") {
		t, err := linuxtpm.Open(addr)
		if err != nil {
			return nil, fmt.Errorf("open %s: %w (is the TPM present, and is this user in group tss?)", addr, err)
		}
		return t, nil
	}
	u, err := url.Parse(addr)
	if err != nil {
		return nil, fmt.Errorf("%w %q: %w", ErrBadURI, addr, err)
	}
	if u.Scheme != "swtpm" || u.Host == "" || u.Path != "" || u.Port() == "" {
		return nil, fmt.Errorf("%w %q: want a device path such as /dev/tpmrm0 or swtpm://127.0.0.1:2321", ErrBadURI, addr)
	}
	c, err := net.DialTimeout("tcp", u.Host, 10*time.Second)
	if err != nil {
		return nil, fmt.Errorf("connect to swtpm at %s: %w (is swtpm running with --server type=tcp?)", u.Host, err)
	}
	return &tcpTransport{c: c, addr: u.Host}, nil
}

// ErrUnavailable: the TPM connection failed. The command may not have run;
// the next command reconnects.
var ErrUnavailable = errors.New("tpm: unavailable")

// tcpTransport speaks raw TPM 2.0 commands to swtpm's data port. It reads the
// 10-byte response header, then exactly the size it announces: TCP may split a
// response, and go-tpm's generic wrapper does a single Read.
type tcpTransport struct {
	c       net.Conn // nil after a failure: the next Send redials
	addr    string
	started bool
	gen     atomic.Uint64 // connections lost
}

// Generation changes whenever the connection is lost: swtpm restarted or the
// connection broke, and every transient object may be gone with it.
func (t *tcpTransport) Generation() uint64 { return t.gen.Load() }

// firstCommandTimeout: swtpm accepts a second connection but answers it only
// once the first closes, so a silent first response means "busy".
const firstCommandTimeout = 15 * time.Second

func (t *tcpTransport) Send(cmd []byte) ([]byte, error) {
	if t.c == nil {
		c, err := net.DialTimeout("tcp", t.addr, 5*time.Second)
		if err != nil {
			return nil, fmt.Errorf("%w: swtpm at %s: %w", ErrUnavailable, t.addr, err)
		}
		t.c, t.started = c, false
	}
	timeout := commandTimeout
	if !t.started {
		timeout = firstCommandTimeout
	}
	if err := t.c.SetDeadline(time.Now().Add(timeout)); err != nil {
		return nil, fmt.Errorf("swtpm: %w", err)
	}
	rsp, err := t.send(cmd)
	var ne net.Error
	if !t.started && errors.As(err, &ne) && ne.Timeout() {
		return nil, fmt.Errorf("swtpm at %s did not answer within %v: it serves one client at a time; is another process (a running agent?) connected to it? %w", t.addr, timeout, err)
	}
	if err != nil {
		// A half-read response leaves the stream out of step: start over.
		// Count the loss now, so the next command (which redials) already
		// finds the key cache invalidated.
		_ = t.c.Close()
		t.c = nil
		t.gen.Add(1)
		return nil, fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	t.started = true
	return rsp, nil
}

func (t *tcpTransport) send(cmd []byte) ([]byte, error) {
	if _, err := t.c.Write(cmd); err != nil {
		return nil, fmt.Errorf("swtpm: write command: %w", err)
	}
	var hdr [10]byte
	if _, err := io.ReadFull(t.c, hdr[:]); err != nil {
		return nil, fmt.Errorf("swtpm: read response header: %w", err)
	}
	size := binary.BigEndian.Uint32(hdr[2:6])
	if size < uint32(len(hdr)) || size > maxResponse {
		return nil, fmt.Errorf("swtpm: response size %d out of range", size)
	}
	rsp := make([]byte, size)
	copy(rsp, hdr[:])
	if _, err := io.ReadFull(t.c, rsp[len(hdr):]); err != nil {
		return nil, fmt.Errorf("swtpm: read response: %w", err)
	}
	return rsp, nil
}

func (t *tcpTransport) Close() error {
	if t.c == nil {
		return nil
	}
	return t.c.Close()
}

// countingTransport counts commands by command code, so that tests and
// benchmarks can say how many TPM commands an operation costs.
type countingTransport struct {
	next     transport.TPMCloser
	total    atomic.Uint64
	observer atomic.Pointer[Observer]
}

// Observer learns each TPM command's name, duration and error (metrics).
type Observer func(command string, took time.Duration, err error)

func (c *countingTransport) Send(cmd []byte) ([]byte, error) {
	c.total.Add(1)
	o := c.observer.Load()
	if o == nil {
		return c.next.Send(cmd)
	}
	start := time.Now()
	rsp, err := c.next.Send(cmd)
	(*o)(commandName(cmd), time.Since(start), err)
	return rsp, err
}

// commandName names the command code of a TPM command (Part 2 §6.5.2).
func commandName(cmd []byte) string {
	if len(cmd) < 10 {
		return "malformed"
	}
	cc := binary.BigEndian.Uint32(cmd[6:10])
	if n, ok := commandNames[cc]; ok {
		return n
	}
	return fmt.Sprintf("0x%03x", cc)
}

var commandNames = map[uint32]string{
	0x120: "EvictControl", 0x131: "CreatePrimary", 0x132: "NV_Read", 0x148: "Certify", 0x14A: "CertifyCreation",
	0x147: "ActivateCredential", 0x153: "Create", 0x157: "Load", 0x15D: "Sign", 0x165: "FlushContext",
	0x169: "NV_ReadPublic", 0x173: "ReadPublic", 0x176: "StartAuthSession", 0x17A: "GetCapability",
	0x16B: "PolicySecret", 0x158: "Quote",
}

func (c *countingTransport) Close() error { return c.next.Close() }

// generation reports the transport's connection generation, or 0 for
// transports that never lose their objects (a device under the kernel's
// resource manager).
func (c *countingTransport) generation() uint64 {
	if g, ok := c.next.(interface{ Generation() uint64 }); ok {
		return g.Generation()
	}
	return 0
}

// attestChannel adapts a transport to go-attestation's CommandChannelTPM20,
// which writes a command and then reads the whole response.
type attestChannel struct {
	t   transport.TPM
	rsp []byte
}

func (a *attestChannel) Write(p []byte) (int, error) {
	rsp, err := a.t.Send(p)
	if err != nil {
		return 0, err
	}
	a.rsp = rsp
	return len(p), nil
}

func (a *attestChannel) Read(p []byte) (int, error) {
	if len(a.rsp) == 0 {
		return 0, io.EOF
	}
	n := copy(p, a.rsp)
	a.rsp = a.rsp[n:]
	return n, nil
}

// Close is a no-op: the TPM owns the transport and closes it once.
func (a *attestChannel) Close() error { return nil }

// MeasurementLog is not offered: tpmauthn attests keys, not boot state.
func (a *attestChannel) MeasurementLog() ([]byte, error) {
	return nil, errors.New("tpm: no measurement log")
}
