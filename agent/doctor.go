package agent

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/tpmauthn/tpmauthn/agent/tpm"
	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/attestation"
	"github.com/tpmauthn/tpmauthn/internal/doctor"
	"github.com/tpmauthn/tpmauthn/internal/natstls"
)

// DoctorOptions are what `tpmauthn-agent doctor` checks beyond the agent's
// configuration.
type DoctorOptions struct {
	// EKCADir, if set, holds the TPM manufacturer CAs the verifier trusts:
	// the EK certificate must chain to them.
	EKCADir string
	// Unit is the systemd unit to check (empty: tpmauthn-agent.service).
	Unit string
}

// Doctor checks a host as the agent sees it, each check one line with the
// fix when it fails (internal/doctor). It does not need the agent running:
// what the running agent knows (the verifier's last answer, its workloads)
// it asks on the socket; the TPM it opens itself when the agent does not
// hold it.
func Doctor(ctx context.Context, cfg Config, o DoctorOptions) []doctor.Check {
	cfg.setDefaults()
	var out []doctor.Check
	add := func(c doctor.Check) { out = append(out, c) }
	if err := cfg.Validate(); err != nil {
		add(doctor.Fail("configuration", err.Error(), "fix the agent's configuration file or flags"))
	} else {
		add(doctor.Pass("configuration", "workloads: %d", len(cfg.Workloads)))
	}
	add(checkDataDir(cfg.DataDir))
	add(checkEnrollment(cfg.DataDir))
	st, agentCheck := runningAgent(ctx, cfg.Socket)
	add(agentCheck)
	add(checkSocket(cfg.Socket))
	out = append(out, checkTPM(cfg.TPM, st, o.EKCADir)...)
	add(checkUnit(ctx, o.Unit))
	add(checkNATS(ctx, cfg))
	if st != nil {
		out = append(out, checkVerifierView(st)...)
	} else {
		add(doctor.Skip("verifier's view of this host", "the agent is not running: it is what asks the verifier"))
	}
	return out
}

func checkDataDir(dir string) doctor.Check {
	const name = "data directory"
	fi, err := os.Stat(dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return doctor.Fail(name, dir+" does not exist", "the agent creates it at its first start (mkdir -m 700 "+dir+")")
	case err != nil:
		return doctor.Fail(name, err.Error(), "check the path and its parents' permissions")
	case !fi.IsDir():
		return doctor.Fail(name, dir+" is not a directory", "point --data-dir at a directory")
	case fi.Mode().Perm()&0o077 != 0:
		return doctor.Fail(name, fmt.Sprintf("%s is mode %v: others can read the TPM key blobs and counters", dir, fi.Mode().Perm()), "chmod 700 "+dir)
	}
	// Root may look at the agent user's directory; anyone else must be its
	// owner (the agent runs as the owner).
	if s, ok := fi.Sys().(*syscall.Stat_t); ok && int(s.Uid) != os.Geteuid() && os.Geteuid() != 0 {
		return doctor.Fail(name, fmt.Sprintf("%s is owned by uid %d, this is uid %d", dir, s.Uid, os.Geteuid()), "run doctor as the agent's user, or chown the directory to it")
	}
	return doctor.Pass(name, "%s, mode %v", dir, fi.Mode().Perm())
}

func checkEnrollment(dir string) doctor.Check {
	const name = "enrollment"
	var e Enrollment
	err := readJSON(filepath.Join(dir, enrollmentFile), &e)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return doctor.Fail(name, "this host is not enrolled", "start the agent with a join token (tpmauthnctl token create; --token-file)")
	case err != nil:
		return doctor.Fail(name, err.Error(), "the enrollment file is damaged: restore the data directory from a backup, or enroll again")
	case e.Status != api.HostActive:
		return doctor.Fail(name, fmt.Sprintf("host %s is %s", e.HostID, e.Status), "an operator approves it: tpmauthnctl host approve "+e.HostID)
	}
	return doctor.Pass(name, "host %s, %s", e.HostID, e.Status)
}

// runningAgent asks the agent on the socket for its status.
func runningAgent(ctx context.Context, socket string) (*api.AgentStatus, doctor.Check) {
	const name = "agent"
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", socket)
	}}}
	defer hc.CloseIdleConnections()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://agent"+api.AgentPathStatus, nil)
	resp, err := hc.Do(req)
	if err != nil {
		return nil, doctor.Fail(name, "not answering on "+socket+": "+err.Error(), "start it: systemctl start tpmauthn-agent (or tpmauthn-agent run), and see its log")
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		var e api.AgentError
		_ = json.NewDecoder(resp.Body).Decode(&e)
		return nil, doctor.Fail(name, fmt.Sprintf("answers %s: %s", resp.Status, e.Error), e.Hint)
	}
	var st api.AgentStatus
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return nil, doctor.Fail(name, "status: "+err.Error(), "is the agent at the socket the same version as this command?")
	}
	return &st, doctor.Pass(name, "running on %s, host %s", socket, st.Host)
}

func checkSocket(socket string) doctor.Check {
	const name = "socket"
	fi, err := os.Stat(socket)
	switch {
	case err != nil:
		return doctor.Fail(name, err.Error(), "the agent creates it when it starts (or systemd, with tpmauthn-agent.socket)")
	case fi.Mode()&fs.ModeSocket == 0:
		return doctor.Fail(name, socket+" is not a socket", "remove it and restart the agent")
	case fi.Mode().Perm()&0o006 != 0o006:
		return doctor.Fail(name, fmt.Sprintf("%s is mode %v: workloads of other users cannot connect", socket, fi.Mode().Perm()),
			"the agent names callers by peer credentials, so the socket is meant for every local user: chmod 666 "+socket)
	}
	return doctor.Pass(name, "%s, mode %v", socket, fi.Mode().Perm())
}

// checkTPM reports the TPM: from the running agent, which holds it, or
// opened here; the EK certificate is read here unless the agent holds a
// TPM that takes one client at a time (swtpm).
func checkTPM(addr string, st *api.AgentStatus, ekCADir string) []doctor.Check {
	if st != nil && st.TPM.Error != "" {
		return []doctor.Check{doctor.Fail("TPM", "the agent's last TPM command failed: "+st.TPM.Error, tpmUnavailableHint)}
	}
	exclusive := strings.HasPrefix(addr, "swtpm://")
	if st != nil && exclusive {
		return []doctor.Check{
			doctor.Pass("TPM", "%s %s, firmware %s, %d transient slots (from the running agent)", st.TPM.Manufacturer, st.TPM.Vendor, st.TPM.Firmware, st.TPM.Slots),
			doctor.Skip("EK certificate", "the running agent holds "+addr+", which takes one client at a time: stop the agent to check it"),
		}
	}
	t, err := tpm.Open(addr)
	if err != nil {
		return []doctor.Check{doctor.Fail("TPM", err.Error(), "check that "+addr+" exists and that this user may use it (group tss for /dev/tpmrm0)")}
	}
	defer t.Close()
	in := t.Info()
	out := []doctor.Check{doctor.Pass("TPM", "%s: %s %s, firmware %s, %d transient slots", addr, manufacturer(in.Manufacturer), in.VendorString,
		firmware(in), in.TransientSlots)}
	return append(out, checkEK(t, ekCADir))
}

func checkEK(t *tpm.TPM, ekCADir string) doctor.Check {
	const name = "EK certificate"
	ek, err := t.EK()
	switch {
	case err != nil:
		return doctor.Fail(name, err.Error(), "the TPM's endorsement key cannot be read: see the TPM's documentation")
	case ek.Certificate == nil:
		return doctor.Fail(name, "the TPM holds none", "enroll through the verifier's EK allow-list instead (tpmauthnctl ek allow HASH)")
	case ekCADir == "":
		return doctor.Pass(name, "issued by %q (give --ek-ca-dir to check its chain)", ek.Certificate.Issuer.String())
	}
	trust, err := attestation.LoadEKTrustDir(ekCADir, slog.New(slog.DiscardHandler))
	if err != nil {
		return doctor.Fail(name, "EK CAs in "+ekCADir+": "+err.Error(), "put the TPM manufacturer's root (and intermediate) certificates there as PEM")
	}
	if err := trust.VerifyEKCertificate(ek.Certificate, nil, time.Now()); err != nil {
		return doctor.Fail(name, fmt.Sprintf("issued by %q, does not chain to %s: %v", ek.Certificate.Issuer.String(), ekCADir, err),
			"add the issuer's CA to the verifier's --ek-ca-dir, or allow this EK: tpmauthnctl ek allow")
	}
	return doctor.Pass(name, "issued by %q, chains to %s", ek.Certificate.Issuer.String(), ekCADir)
}

func checkUnit(ctx context.Context, unit string) doctor.Check {
	const name = "systemd unit"
	if unit == "" {
		unit = "tpmauthn-agent.service"
	}
	if _, err := os.Stat("/run/systemd/system"); err != nil {
		return doctor.Skip(name, "systemd is not running here")
	}
	out, err := exec.CommandContext(ctx, "systemctl", "is-active", unit).Output()
	state := strings.TrimSpace(string(out))
	if err != nil || state != "active" {
		return doctor.Fail(name, unit+" is "+state, "systemctl enable --now "+unit+"; journalctl -u "+unit)
	}
	return doctor.Pass(name, "%s is active", unit)
}

// checkNATS dials the fleet's NATS and, with TLS, verifies the server as the
// agent does.
func checkNATS(ctx context.Context, cfg Config) doctor.Check {
	const name = "NATS"
	u, err := url.Parse(strings.Split(cfg.NATSURL, ",")[0])
	if err != nil || u.Host == "" {
		return doctor.Fail(name, fmt.Sprintf("URL %q: %v", cfg.NATSURL, err), "give --nats-url nats://HOST:PORT or tls://HOST:PORT")
	}
	host := u.Host
	if u.Port() == "" {
		host = net.JoinHostPort(u.Hostname(), "4222")
	}
	d := net.Dialer{Timeout: 5 * time.Second}
	c, err := d.DialContext(ctx, "tcp", host)
	if err != nil {
		return doctor.Fail(name, "cannot reach "+host+": "+err.Error(), "check the address, the verifier's NATS listener and the firewall")
	}
	defer c.Close()
	if natstls.Loopback(cfg.NATSURL) && u.Scheme != "tls" {
		return doctor.Pass(name, "%s reachable (loopback, no TLS)", host)
	}
	trust, err := loadServerTrust(cfg)
	if err != nil {
		return doctor.Fail(name, err.Error(), "check --nats-ca")
	}
	return checkNATSTLS(c, u.Hostname(), trust)
}

// checkNATSTLS reads the server's INFO and, as nats.go does, upgrades the
// connection to TLS, verifying the server with the agent's roots.
func checkNATSTLS(c net.Conn, serverName string, trust *serverTrust) doctor.Check {
	const name = "NATS"
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 4096)
	n, err := c.Read(buf) // INFO {...}
	if err != nil || !strings.HasPrefix(string(buf[:n]), "INFO ") {
		return doctor.Fail(name, fmt.Sprintf("no NATS INFO from %s: %v", c.RemoteAddr(), err), "is this a NATS server's client port?")
	}
	trust.mu.Lock()
	roots := trust.roots
	trust.mu.Unlock()
	tc := tls.Client(c, &tls.Config{ServerName: serverName, RootCAs: roots, MinVersion: tls.VersionTLS12})
	if err := tc.Handshake(); err != nil {
		return doctor.Fail(name, "TLS with "+c.RemoteAddr().String()+": "+err.Error(),
			"the agent verifies the server with the CA its join token pinned (or --nats-ca): check the server's certificate and that CA")
	}
	cert := tc.ConnectionState().PeerCertificates[0]
	return doctor.Pass(name, "%s, TLS verified (server certificate %q, issued by %q)", c.RemoteAddr(), cert.Subject.CommonName, cert.Issuer.CommonName)
}

// checkVerifierView reports what the verifier said at the agent's last
// check, and each workload's credential.
func checkVerifierView(st *api.AgentStatus) []doctor.Check {
	var out []doctor.Check
	switch {
	case st.HostStatus == HostRefused:
		out = append(out, doctor.Fail("verifier", st.CheckError, "tpmauthnctl host show "+st.Host+" says why; a revoked or offboarded host enrolls again with a new join token (tpmauthnctl token create), after its data directory is cleared"))
	case st.CheckError != "":
		out = append(out, doctor.Fail("verifier", "the last credential check failed: "+st.CheckError, "see the agent's log; is tpmauthn-verifier running and reachable?"))
	case st.LastCheck.IsZero():
		out = append(out, doctor.Skip("verifier", "the agent has not checked its credentials with the verifier yet"))
	default:
		out = append(out, doctor.Pass("verifier", "answered the agent's credential check %s ago", time.Since(st.LastCheck).Round(time.Second)))
	}
	for _, w := range st.Workloads {
		name := "workload " + w.Name
		if w.Problem != "" {
			out = append(out, doctor.Fail(name, w.Problem, w.Hint))
			continue
		}
		out = append(out, doctor.Pass(name, "credential %s", w.Credential))
	}
	return out
}
