package main

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"
	"github.com/spf13/cobra"

	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/internal/doctor"
)

// maxClockOffset is how far this machine's clock may be from the
// verifier's: join tokens, logins and sessions expire by the verifier's.
const maxClockOffset = 2 * time.Second

func (a *app) doctorCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "doctor",
		Short: "Check the fleet as this operator reaches it: NATS, auth callout, verifier, clock, policy, JetStream, audit, hosts",
		Long: `Checks, one line each with the fix for what is wrong: the connection to
NATS (as the operator key or as the person logged in at this host's agent),
that auth callout answers connects, that the verifier answers, the clock
offset to the verifier, the policy in force and its last reload, every
JetStream bucket's and the audit stream's replicas and leader, the audit
stream's fill, the EK trust, and hosts or credentials waiting for an
operator. --json for scripts; exits 1 when a check fails.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			checks := a.doctor()
			if err := doctor.Print(a.out, checks, a.s.JSON); err != nil {
				return err
			}
			if doctor.Failed(checks) {
				return errors.New("some checks failed (see above)")
			}
			return nil
		},
	}
}

func (a *app) doctor() []doctor.Check {
	nc, err := a.connect()
	if err != nil {
		return []doctor.Check{doctor.Fail("connection", err.Error(), "see the message; tpmauthnctl --help lists where the verifier and the credential come from")}
	}
	out := []doctor.Check{connectionCheck(nc)}
	out = append(out, calloutCheck(nc.ConnectedUrl(), a.s.Timeout))
	t0 := time.Now()
	var st api.Status
	if err := a.call("status", struct{}{}, &st); err != nil {
		return append(out, doctor.Fail("verifier", err.Error(), "is tpmauthn-verifier running? see its log"))
	}
	rtt := time.Since(t0)
	out = append(out, doctor.Pass("verifier", "version %s answered in %v (RP ID %s, approval %s)", st.Version, rtt.Round(time.Millisecond), st.RPID, st.Approval))
	out = append(out, clockCheck(st.Time, t0, rtt), policyCheck(st.Policy))
	out = append(out, streamChecks(st.Streams)...)
	out = append(out, auditCheck(st), ekCheck(st), waitingCheck(st))
	return out
}

func connectionCheck(nc *nats.Conn) doctor.Check {
	tlsState := "no TLS (loopback)"
	if cs, err := nc.TLSConnectionState(); err == nil && len(cs.PeerCertificates) > 0 {
		tlsState = "TLS verified, server certificate issued by " + fmt.Sprintf("%q", cs.PeerCertificates[0].Issuer.CommonName)
	}
	return doctor.Pass("connection", "%s, server %s (nats-server %s), %s", nc.ConnectedUrlRedacted(), nc.ConnectedServerName(), nc.ConnectedServerVersion(), tlsState)
}

// calloutCheck connects with a key the fleet has never seen: auth callout
// must refuse it, quickly. No answer means no verifier answers callouts.
func calloutCheck(url string, timeout time.Duration) doctor.Check {
	const name = "auth callout"
	kp, err := nkeys.CreateUser()
	if err != nil {
		return doctor.Fail(name, err.Error(), "")
	}
	pub, _ := kp.PublicKey()
	t0 := time.Now()
	nc, err := nats.Connect(url, nats.Nkey(pub, kp.Sign), nats.Timeout(timeout), nats.MaxReconnects(0), nats.Name("tpmauthnctl doctor"))
	took := time.Since(t0).Round(time.Millisecond)
	switch {
	case err == nil:
		nc.Close()
		return doctor.Fail(name, "an unknown key connected", "the server does not send connects to the verifier: check its auth_callout block (tpmauthnctl nats-config)")
	case errors.Is(err, nats.ErrAuthorization) || strings.Contains(strings.ToLower(err.Error()), "authorization"):
		return doctor.Pass(name, "an unknown key was refused in %v", took)
	}
	return doctor.Fail(name, "an unknown key's connect ended with "+err.Error()+" after "+took.String(),
		"no verifier answered the callout in time: is tpmauthn-verifier running, and is it the server's auth_callout issuer?")
}

func clockCheck(theirs, sent time.Time, rtt time.Duration) doctor.Check {
	const name = "clock"
	if theirs.IsZero() {
		return doctor.Skip(name, "the verifier does not report its time (an older version)")
	}
	off := theirs.Sub(sent.Add(rtt / 2))
	if off < 0 {
		off = -off
	}
	if off > maxClockOffset+rtt {
		return doctor.Fail(name, fmt.Sprintf("%v off the verifier's", off.Round(time.Millisecond)),
			"tokens, logins and sessions expire by the verifier's clock: run NTP (systemctl enable --now systemd-timesyncd) here and on the verifier")
	}
	return doctor.Pass(name, "within %v of the verifier's", off.Round(time.Millisecond))
}

func policyCheck(p *api.PolicyState) doctor.Check {
	const name = "policy"
	switch {
	case p == nil:
		return doctor.Skip(name, "the verifier does not report its policy (an older version)")
	case p.Error != "":
		return doctor.Fail(name, "the last reload of "+p.File+" failed: "+p.Error+"; the previous policy stays in force", "fix the file; the verifier reloads it within a second")
	case p.File == "":
		return doctor.Fail(name, "no policy file: every connect is refused (no role grants anything)", "give the verifier --policy FILE")
	}
	return doctor.Pass(name, "%s (%s): %d roles, %d bindings, %d identity providers", p.File, p.Modified.Local().Format(time.DateTime), p.Roles, p.Bindings, p.IdPs)
}

func streamChecks(ss []api.StreamHealth) []doctor.Check {
	var out []doctor.Check
	for _, s := range ss {
		name := "JetStream " + s.Stream
		var bad []string
		if s.Error != "" {
			out = append(out, doctor.Fail(name, s.Error, "check the JetStream cluster: nats-server's /jsz, tpmauthnctl status"))
			continue
		}
		for _, p := range s.Peers {
			if p.Offline || !p.Current {
				bad = append(bad, fmt.Sprintf("%s %s (lag %d)", p.Name, map[bool]string{true: "offline", false: "lagging"}[p.Offline], p.Lag))
			}
		}
		if len(bad) > 0 {
			out = append(out, doctor.Fail(name, fmt.Sprintf("R%d, leader %s; %s", s.Replicas, s.Leader, strings.Join(bad, ", ")),
				"bring the servers back; a replica that stays behind is replaced with nats stream cluster peer-remove"))
			continue
		}
		leader := s.Leader
		if leader == "" {
			leader = "standalone"
		}
		out = append(out, doctor.Pass(name, "R%d, leader %s, %d messages", s.Replicas, leader, s.Messages))
	}
	return out
}

func auditCheck(st api.Status) doctor.Check {
	const name = "audit trail"
	if st.AuditMaxBytes > 0 && st.AuditBytes*10 >= uint64(st.AuditMaxBytes)*8 {
		return doctor.Fail(name, fmt.Sprintf("%d of %d bytes used: connects are refused when it is full", st.AuditBytes, st.AuditMaxBytes),
			"export and archive it (tpmauthnctl audit export), then raise the stream's max_bytes with an administrator's credential")
	}
	if len(st.AuditCheckpoint) == 0 {
		return doctor.Pass(name, "%d bytes, no signed checkpoint yet", st.AuditBytes)
	}
	return doctor.Pass(name, "%d bytes, signed by %s", st.AuditBytes, st.AuditKey)
}

func ekCheck(st api.Status) doctor.Check {
	if st.EKRoots == 0 {
		return doctor.Fail("EK trust", "the verifier trusts no TPM manufacturer root: hosts enroll only through the EK allow-list",
			"give the verifier --ek-ca-dir with the manufacturers' root certificates (or allow EKs one by one: tpmauthnctl ek allow)")
	}
	return doctor.Pass("EK trust", "%d manufacturer roots", st.EKRoots)
}

// waitingCheck reports what waits for an operator: hosts to approve,
// credentials quarantined by a tamper signal.
func waitingCheck(st api.Status) doctor.Check {
	const name = "hosts and credentials"
	var w []string
	if n := st.Hosts[string(api.HostPending)]; n > 0 {
		w = append(w, fmt.Sprintf("%d hosts wait for approval (tpmauthnctl host list; host approve ID)", n))
	}
	if n := st.Credentials[string(api.CredentialQuarantined)]; n > 0 {
		w = append(w, fmt.Sprintf("%d credentials are quarantined after a tamper signal (tpmauthnctl credential list; audit tail)", n))
	}
	if len(w) > 0 {
		return doctor.Fail(name, strings.Join(w, "; "), "look into each: approve or revoke; release a quarantine only once its cause is understood")
	}
	return doctor.Pass(name, "%d hosts, %d credentials, none waiting for an operator", sum(st.Hosts), sum(st.Credentials))
}

func sum(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}
