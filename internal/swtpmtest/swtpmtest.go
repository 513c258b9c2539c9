// Package swtpmtest runs real software TPMs (swtpm) for tests.
//
// Each call to New manufactures a fresh TPM with swtpm_setup --tpm2
// --create-ek-cert --create-platform-cert, its EK certificate issued by a
// swtpm-localca CA that lives in the test's temp dir (nothing in /etc or
// $HOME), and starts swtpm on free loopback ports. Cleanup stops it and checks
// that no transient object was left loaded. Under go test -short a test
// skips; without swtpm installed it fails under CI=true and skips otherwise,
// naming the install line.
package swtpmtest

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/tpmauthn/tpmauthn/agent/tpm"
	"github.com/tpmauthn/tpmauthn/internal/eventually"
	"github.com/tpmauthn/tpmauthn/internal/freeport"
)

// InstallHint is the one line that installs what this package needs.
const InstallHint = "sudo apt-get install -y swtpm swtpm-tools"

var binaries = []string{"swtpm", "swtpm_setup", "swtpm_localca", "swtpm_ioctl"}

// Require skips under -short (the unit tier runs no swtpm). Otherwise,
// when swtpm is missing, it skips locally and fails under CI=true.
func Require(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("-short: this test runs a software TPM (swtpm)")
	}
	for _, b := range binaries {
		if _, err := exec.LookPath(b); err != nil {
			msg := fmt.Sprintf("%s not found: this test needs a software TPM; install it with: %s", b, InstallHint)
			if os.Getenv("CI") == "true" {
				t.Fatal(msg)
			}
			t.Skip(msg)
		}
	}
}

// TPM is a running swtpm.
type TPM struct {
	Dir      string // temp dir holding everything below
	StateDir string // TPM state (NV, persistent objects)
	CADir    string // swtpm-localca state: the manufacturer CA
	Port     int    // TCP command port on 127.0.0.1
	ctrlPort int
	cmd      *exec.Cmd
	done     chan error
}

// Option changes how New manufactures a TPM.
type Option func(*TPM)

// SameManufacturer has the new TPM's EK certificate issued by other's CA, as
// two TPMs of one vendor are: one root trusts both.
func SameManufacturer(other *TPM) Option {
	return func(s *TPM) { s.CADir = other.CADir }
}

// New manufactures and starts a fresh swtpm for t.
func New(t testing.TB, opts ...Option) *TPM {
	t.Helper()
	Require(t)
	s := &TPM{Dir: t.TempDir()}
	s.StateDir = filepath.Join(s.Dir, "state")
	s.CADir = filepath.Join(s.Dir, "ca")
	for _, o := range opts {
		o(s)
	}
	if err := s.manufacture(); err != nil {
		t.Fatalf("swtpmtest: %v", err)
	}
	if err := s.Start(); err != nil {
		t.Fatalf("swtpmtest: %v", err)
	}
	t.Cleanup(func() {
		s.checkNoTransient(t)
		if err := s.Stop(); err != nil {
			t.Errorf("swtpmtest: stop: %v", err)
		}
	})
	return s
}

// URI is the address agent/tpm.Open understands.
func (s *TPM) URI() string { return "swtpm://127.0.0.1:" + strconv.Itoa(s.Port) }

// Open opens the TPM through agent/tpm and closes it on cleanup.
func (s *TPM) Open(t testing.TB) *tpm.TPM {
	t.Helper()
	tp, err := tpm.Open(s.URI())
	if err != nil {
		t.Fatalf("swtpmtest: open: %v", err)
	}
	t.Cleanup(func() { _ = tp.Close() })
	return tp
}

// RootCert is the manufacturer root: swtpm-localca's self-signed root CA.
func (s *TPM) RootCert(t testing.TB) *x509.Certificate {
	t.Helper()
	return readCert(t, filepath.Join(s.CADir, "swtpm-localca-rootca-cert.pem"))
}

// IntermediateCert is swtpm-localca's issuing CA, which signed the EK
// certificate; the TPM holds only the leaf.
func (s *TPM) IntermediateCert(t testing.TB) *x509.Certificate {
	t.Helper()
	return readCert(t, filepath.Join(s.CADir, "issuercert.pem"))
}

func readCert(t testing.TB, path string) *x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("swtpmtest: %v", err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		t.Fatalf("swtpmtest: %s holds no PEM block", path)
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatalf("swtpmtest: parse %s: %v", path, err)
	}
	return c
}

func (s *TPM) manufacture() error {
	for _, d := range []string{s.StateDir, s.CADir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return err
		}
	}
	files := map[string]string{
		"swtpm-localca.conf":    fmt.Sprintf("statedir = %[1]s\nsigningkey = %[1]s/signkey.pem\nissuercert = %[1]s/issuercert.pem\ncertserial = %[1]s/certserial\n", s.CADir),
		"swtpm-localca.options": "--platform-manufacturer tpmauthn\n--platform-version 1.0\n--platform-model swtpm\n",
	}
	files["swtpm_setup.conf"] = fmt.Sprintf("create_certs_tool = swtpm_localca\ncreate_certs_tool_config = %s\ncreate_certs_tool_options = %s\nactive_pcr_banks = sha256\n",
		filepath.Join(s.Dir, "swtpm-localca.conf"), filepath.Join(s.Dir, "swtpm-localca.options"))
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(s.Dir, name), []byte(body), 0o600); err != nil {
			return err
		}
	}
	cmd := exec.Command("swtpm_setup", "--tpm2", "--tpmstate", s.StateDir,
		"--config", filepath.Join(s.Dir, "swtpm_setup.conf"),
		"--create-ek-cert", "--create-platform-cert", "--lock-nvram", "--not-overwrite",
		"--logfile", filepath.Join(s.Dir, "swtpm_setup.log"))
	cmd.Env = s.env()
	if out, err := cmd.CombinedOutput(); err != nil {
		log, _ := os.ReadFile(filepath.Join(s.Dir, "swtpm_setup.log"))
		return fmt.Errorf("swtpm_setup: %w\n%s\n%s", err, out, log)
	}
	return nil
}

// env keeps swtpm_setup from reading or writing anything outside s.Dir.
func (s *TPM) env() []string {
	return []string{
		"PATH=" + os.Getenv("PATH"),
		"HOME=" + s.Dir,
		"XDG_CONFIG_HOME=" + filepath.Join(s.Dir, "xdg"),
		"TMPDIR=" + s.Dir,
	}
}

// Start starts swtpm on the manufactured state, on new free ports.
func (s *TPM) Start() error {
	var lastErr error
	for range 5 {
		port, ctrl, err := freePorts()
		if err != nil {
			return err
		}
		s.Port, s.ctrlPort = port, ctrl
		if lastErr = s.start(); lastErr == nil {
			return nil
		}
	}
	return lastErr
}

func (s *TPM) start() error {
	logf, err := os.OpenFile(filepath.Join(s.Dir, "swtpm.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	var stderr bytes.Buffer
	s.cmd = exec.Command("swtpm", "socket", "--tpm2",
		"--server", fmt.Sprintf("type=tcp,port=%d,bindaddr=127.0.0.1", s.Port),
		"--ctrl", fmt.Sprintf("type=tcp,port=%d,bindaddr=127.0.0.1", s.ctrlPort),
		"--flags", "not-need-init,startup-clear",
		"--tpmstate", "dir="+s.StateDir)
	s.cmd.Env = s.env()
	s.cmd.Stdout = logf
	s.cmd.Stderr = &stderr
	if err := s.cmd.Start(); err != nil {
		return fmt.Errorf("start swtpm: %w", err)
	}
	s.done = make(chan error, 1)
	go func() { s.done <- s.cmd.Wait() }()
	// Probe the control port: the data port serves one client at a time,
	// and a probe there would count as a client.
	ctrl := fmt.Sprintf("127.0.0.1:%d", s.ctrlPort)
	exited := false
	err = eventually.Wait(10*time.Second, func() error {
		select {
		case err := <-s.done:
			exited = true
			return eventually.Stop(fmt.Errorf("swtpm exited: %v: %s", err, stderr.String()))
		default:
		}
		c, err := net.DialTimeout("tcp", ctrl, time.Second)
		if err != nil {
			return fmt.Errorf("swtpm does not listen on %s: %w", ctrl, err)
		}
		return c.Close()
	})
	if err != nil && !exited {
		_ = s.cmd.Process.Kill()
		<-s.done
	}
	return err
}

// StartOnPort starts swtpm again on the ports it had (after Stop), as a TPM
// that comes back at the same address.
func (s *TPM) StartOnPort() error {
	// The old socket may linger for a moment: swtpm fails to bind and exits.
	return eventually.Wait(5*time.Second, s.start)
}

// Clone copies this TPM's state (EK, SRK, persistent objects, NV) into a new
// swtpm, as copying a VM's vTPM would: key blobs of one load in the other.
// This TPM is stopped for the copy and started again.
func (s *TPM) Clone(t testing.TB) *TPM {
	t.Helper()
	if err := s.Stop(); err != nil {
		t.Fatalf("swtpmtest: %v", err)
	}
	c := &TPM{Dir: t.TempDir(), CADir: s.CADir}
	c.StateDir = filepath.Join(c.Dir, "state")
	if err := os.CopyFS(c.StateDir, os.DirFS(s.StateDir)); err != nil {
		t.Fatalf("swtpmtest: copy state: %v", err)
	}
	if err := s.StartOnPort(); err != nil {
		t.Fatalf("swtpmtest: %v", err)
	}
	if err := c.Start(); err != nil {
		t.Fatalf("swtpmtest: %v", err)
	}
	t.Cleanup(func() {
		c.checkNoTransient(t)
		_ = c.Stop()
	})
	return c
}

// FromState starts a swtpm on a copy of a TPM state directory kept from an
// earlier run (a fixture): its EK, SRK and NV are that TPM's, so key blobs
// made by it load here. It has no manufacturer CA of its own (CADir empty).
func FromState(t testing.TB, stateDir string) *TPM {
	t.Helper()
	Require(t)
	s := &TPM{Dir: t.TempDir()}
	s.StateDir = filepath.Join(s.Dir, "state")
	if err := os.CopyFS(s.StateDir, os.DirFS(stateDir)); err != nil {
		t.Fatalf("swtpmtest: copy state: %v", err)
	}
	if err := os.Chmod(s.StateDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err != nil {
		t.Fatalf("swtpmtest: %v", err)
	}
	t.Cleanup(func() {
		s.checkNoTransient(t)
		_ = s.Stop()
	})
	return s
}

// Stop shuts the TPM down cleanly (its state is saved) and waits for swtpm.
func (s *TPM) Stop() error {
	if s.cmd == nil {
		return nil
	}
	out, err := exec.Command("swtpm_ioctl", "--tcp", fmt.Sprintf("127.0.0.1:%d", s.ctrlPort), "-s").CombinedOutput()
	if err != nil {
		_ = s.cmd.Process.Kill()
	}
	select {
	case <-s.done:
	case <-time.After(10 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.done
	}
	s.cmd = nil
	if err != nil {
		return fmt.Errorf("swtpm_ioctl -s: %w: %s", err, out)
	}
	return nil
}

// Restart stops swtpm and starts it again on the same state: transient
// objects are gone, persistent ones and NV remain.
func (s *TPM) Restart(t testing.TB) {
	t.Helper()
	if err := s.Stop(); err != nil {
		t.Fatalf("swtpmtest: %v", err)
	}
	if err := s.Start(); err != nil {
		t.Fatalf("swtpmtest: %v", err)
	}
}

// checkNoTransient fails t if the TPM holds transient objects at cleanup.
// Cleanups run last-in first-out, so every TPM opened after New is closed.
func (s *TPM) checkNoTransient(t testing.TB) {
	if s.cmd == nil {
		return
	}
	tp, err := tpm.Open(s.URI())
	if err != nil {
		t.Errorf("swtpmtest: leak check: %v", err)
		return
	}
	defer tp.Close()
	if n := tp.StaleTransientAtOpen(); n != 0 {
		t.Errorf("swtpmtest: %d transient object(s) left loaded in the TPM after the test", n)
	}
}

// freePorts picks two distinct ports below the ephemeral range (see
// internal/freeport: swtpm binds them after this returns, and restarts on
// them).
func freePorts() (int, int, error) {
	a, err := freeport.Pick()
	if err != nil {
		return 0, 0, err
	}
	for {
		b, err := freeport.Pick()
		if err != nil {
			return 0, 0, err
		}
		if b != a {
			return a, b, nil
		}
	}
}
