package verifier

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/attestation"
	"github.com/tpmauthn/tpmauthn/internal/promserve"
	"github.com/tpmauthn/tpmauthn/verifier/auditlog"
	"github.com/tpmauthn/tpmauthn/verifier/keys"
	"github.com/tpmauthn/tpmauthn/verifier/record"
)

// Version of the verifier service (NATS micro).
const Version = "0.1.0"

// queueGroup is shared by every verifier instance: each request is served once.
const queueGroup = "tpmauthn"

// Verifier is the tpmauthn verifier service.
type Verifier struct {
	cfg     Config
	keys    *keys.Set
	log     *slog.Logger
	ekTrust *attestation.EKTrust
	rp      *attestation.RelyingParty

	srv   *server.Server // embedded, or nil
	nc    *nats.Conn
	sysNC *nats.Conn // system account: kicks
	xbox  *xkeyBox   // seals callout traffic to the servers' xkeys
	audit *auditlog.Log
	st    *store
	svcs  []micro.Service
	sem   chan struct{} // bounds concurrent requests
	// auditWaiters bounds the requests waiting for the audit trail.
	auditWaiters chan struct{}
	served       atomic.Uint64 // requests answered (endpoints and callouts)
	shed         atomic.Uint64 // callout requests dropped unanswered (too old)
	done         chan struct{} // closed by Close: stops the callout workers

	policy    *policySource
	pubKeys   keyCache
	creds     credCache
	hosts     hostCache
	credLocks credLocks
	sessions  sessionIndex // which sessions named in records have ended
	capWarned atomic.Int64 // unix time of the last too-many-sessions warning
	rpIDHash  [32]byte

	metrics    *metrics
	metricsSrv *promserve.Server
	wg         sync.WaitGroup
	close      sync.Once
	// work counts the request handlers and callout workers: Close waits for
	// them before it closes the audit log, so that no event they record
	// (and no "done" an operator is told) is lost.
	work     sync.WaitGroup
	workMu   sync.Mutex
	stopping bool
}

// New loads (or creates) the key material and trust configuration.
func New(cfg Config) (*Verifier, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	ks, created, err := keys.LoadOrCreate(cfg.DataDir)
	if err != nil {
		return nil, err
	}
	xbox, err := newXKeyBox(ks.XKey)
	if err != nil {
		return nil, err
	}
	v := &Verifier{cfg: cfg, keys: ks, xbox: xbox, log: cfg.Logger, sem: make(chan struct{}, cfg.Workers), auditWaiters: make(chan struct{}, cfg.Workers), metrics: newMetrics(), done: make(chan struct{})}
	if len(created) > 0 {
		v.log.Info("created key material", "data_dir", cfg.DataDir, "files", created)
	}
	if cfg.EKCADir != "" {
		if v.ekTrust, err = attestation.LoadEKTrustDir(cfg.EKCADir, v.log); err != nil {
			return nil, fmt.Errorf("enrollment.ek_ca_dir: %w", err)
		}
	} else {
		v.log.Warn("no EK CA directory configured: EK certificates are not trusted, only the EK allow-list can enroll hosts")
	}
	v.rpIDHash = sha256.Sum256([]byte(cfg.RPID))
	if v.policy, err = newPolicySource(cfg.PolicyFile, func(err error) {
		v.log.Error("policy reload failed; keeping the last good policy", "error", err)
	}); err != nil {
		return nil, err
	}
	v.rp, err = attestation.NewRelyingParty(attestation.RPConfig{
		RPID: cfg.RPID, Origins: []string{cfg.Origin}, FleetRoots: []*x509.Certificate{ks.FleetCA},
	})
	if err != nil {
		return nil, err
	}
	return v, nil
}

// Start connects (starting the embedded server first when no NATS URL is
// set), opens the KV state and serves every endpoint. It returns once the
// verifier is serving.
func (v *Verifier) Start(ctx context.Context) error {
	url := v.cfg.NATSURL
	if url == "" {
		srv, err := StartEmbedded(v.keys, v.cfg.DataDir, v.cfg.NATSListen, v.log)
		if err != nil {
			return err
		}
		v.srv = srv
		url = srv.ClientURL()
		v.log.Info("embedded nats-server ready", "url", url)
	}
	kp := v.keys.Verifier
	if v.cfg.NATSSeed != "" {
		var err error
		if kp, err = keys.LoadNKey(v.cfg.NATSSeed); err != nil {
			return err
		}
	}
	nc, err := nats.Connect(url, append(v.connOptions("tpmauthn-verifier"), nats.Nkey(keys.Public(kp), kp.Sign))...)
	if err != nil {
		v.Close()
		return fmt.Errorf("connect to NATS at %s as the verifier user: %w", url, err)
	}
	v.nc = nc
	// A cluster's JetStream may still be electing its leader: retry a while.
	for attempt := 0; ; attempt++ {
		if v.st, err = openStore(ctx, nc); err == nil {
			break
		}
		if attempt == 30 || ctx.Err() != nil {
			v.Close()
			return err
		}
		if attempt == 0 {
			v.log.Info("waiting for JetStream", "error", err)
		}
		time.Sleep(500 * time.Millisecond)
	}
	acfg := v.cfg.Audit
	acfg.Logger = v.log
	acfg.OnAppend = func(d time.Duration) { v.metrics.auditAppend.Observe(d.Seconds()) }
	if v.audit, err = auditlog.Open(ctx, v.st.js, v.keys.Issuer, acfg); err != nil {
		v.Close()
		return err
	}
	v.metrics.watchAuditBacklog(v.AuditBacklog)
	if err := v.connectSys(url); err != nil {
		v.Close()
		return err
	}
	if err := v.watchSessions(); err != nil {
		v.Close()
		return err
	}
	if err := v.watchHosts(ctx); err != nil {
		v.Close()
		return err
	}
	if err := v.watchRevocations(ctx); err != nil {
		v.Close()
		return err
	}
	if err := v.serve(); err != nil {
		v.Close()
		return err
	}
	// Subscriptions reach the server asynchronously: make sure they did
	// before reporting ready.
	for _, c := range []*nats.Conn{nc, v.sysNC} {
		if err := c.FlushTimeout(5 * time.Second); err != nil {
			v.Close()
			return fmt.Errorf("NATS flush: %w", err)
		}
	}
	if v.cfg.MetricsListen != "" {
		srv, err := promserve.Start(v.cfg.MetricsListen, v.metrics.reg)
		if err != nil {
			v.Close()
			return err
		}
		v.metricsSrv = srv
		v.log.Info("metrics", "url", "http://"+srv.Addr()+"/metrics")
	}
	if err := os.WriteFile(v.clientURLFile(), []byte(url+"\n"), 0o644); err != nil {
		v.log.Warn("cannot record the client URL for tpmauthnctl", "error", err)
	}
	v.log.Info("verifier serving", "nats", url, "rp_id", v.cfg.RPID, "approval", v.cfg.Approval)
	return nil
}

func (v *Verifier) clientURLFile() string {
	_, f := keys.OperatorFiles(v.cfg.DataDir)
	return f
}

// connOptions: the verifier comes back quickly after a server restart (every
// client is waiting for its callouts then), and reports connection trouble
// in its log rather than on stderr.
func (v *Verifier) connOptions(name string) []nats.Option {
	return []nats.Option{
		nats.Name(name), nats.MaxReconnects(-1), nats.Timeout(5 * time.Second),
		nats.ReconnectWait(100 * time.Millisecond), nats.ReconnectJitter(100*time.Millisecond, 100*time.Millisecond),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			v.log.Warn("NATS", "connection", name, "error", err)
		}),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				v.log.Warn("NATS disconnected; reconnecting", "connection", name, "error", err)
			}
		}),
	}
}

// Run starts the verifier and serves until ctx is done.
func (v *Verifier) Run(ctx context.Context) error {
	if err := v.Start(ctx); err != nil {
		return err
	}
	<-ctx.Done()
	v.Close()
	return nil
}

// ClientURL is where clients reach NATS.
func (v *Verifier) ClientURL() string {
	if v.srv != nil {
		return v.srv.ClientURL()
	}
	return v.cfg.NATSURL
}

// MetricsAddr is where /metrics is served, or "".
func (v *Verifier) MetricsAddr() string {
	if v.metricsSrv == nil {
		return ""
	}
	return v.metricsSrv.Addr()
}

// drained drains nc (its handlers finish what they were given; no more
// messages are delivered) and waits for that, at most 5 s. nats.go closes a
// connection once its drain completes.
func drained(nc *nats.Conn) {
	if nc == nil || nc.Drain() != nil {
		return
	}
	for i := 0; i < 1000 && !nc.IsClosed(); i++ {
		time.Sleep(5 * time.Millisecond)
	}
}

// FlushAudit waits until every event recorded so far is in the stream.
func (v *Verifier) FlushAudit() { v.audit.Flush() }

// Served returns how many requests this instance answered.
func (v *Verifier) Served() uint64 { return v.served.Load() }

// AuditBacklog is the number of audit events recorded but not yet appended.
func (v *Verifier) AuditBacklog() int {
	return v.audit.Backlog()
}

// Shed is the number of callout requests dropped because the server had
// stopped waiting for them.
func (v *Verifier) Shed() uint64 { return v.shed.Load() }

// Keys returns the verifier's key material (for tests and tpmauthnctl).
func (v *Verifier) Keys() *keys.Set { return v.keys }

// Close stops serving, waits for requests in flight and stops the embedded
// server.
func (v *Verifier) Close() {
	v.close.Do(func() {
		v.metricsSrv.Stop()
		for _, s := range v.svcs {
			_ = s.Stop()
		}
		v.workMu.Lock()
		v.stopping = true
		v.workMu.Unlock()
		close(v.done) // callout workers stop taking requests
		v.work.Wait()
		// The disconnect handlers record audit events: let the ones under
		// way finish before the log closes, and take no more.
		drained(v.sysNC)
		// Append what is queued while the connection is still open.
		v.audit.Close()
		drained(v.nc)
		if v.sysNC != nil {
			v.sysNC.Close()
		}
		if v.nc != nil {
			v.nc.Close()
		}
		v.wg.Wait()
		if v.srv != nil {
			v.srv.Shutdown()
			v.srv.WaitForShutdown()
		}
	})
}

// serve registers the v1 service (exported to APP), the admin service and
// the auth-callout responder, all in one queue group.
func (v *Verifier) serve() error {
	svc, err := micro.AddService(v.nc, micro.Config{Name: "tpmauthn", Version: Version, QueueGroup: queueGroup,
		Description: "tpmauthn enrollment and registration"})
	if err != nil {
		return fmt.Errorf("start service: %w", err)
	}
	v.svcs = append(v.svcs, svc)
	endpoints := map[string]func(context.Context, []byte) (any, error){
		api.SubjectEnrollBegin:      v.enrollBegin,
		api.SubjectEnrollFinish:     v.enrollFinish,
		api.SubjectEnrollStatus:     v.enrollStatus,
		api.SubjectRegisterBegin:    v.registerBegin,
		api.SubjectRegisterFinish:   v.registerFinish,
		api.SubjectCredentialStatus: v.credentialStatus,
	}
	for subj, h := range endpoints {
		name := strings.ReplaceAll(strings.TrimPrefix(subj, "tpmauthn.v1."), ".", "-")
		if err := svc.AddEndpoint(name, v.handler(subj, h), micro.WithEndpointSubject(subj)); err != nil {
			return fmt.Errorf("endpoint %s: %w", subj, err)
		}
	}
	admin, err := micro.AddService(v.nc, micro.Config{Name: "tpmauthn-admin", Version: Version, QueueGroup: queueGroup,
		Description: "tpmauthn operator API"})
	if err != nil {
		return fmt.Errorf("start admin service: %w", err)
	}
	v.svcs = append(v.svcs, admin)
	for op, h := range v.adminEndpoints() {
		subj := api.SubjectAdminPrefix + op
		if err := admin.AddEndpoint(strings.ReplaceAll(op, ".", "-"), v.handler(subj, h), micro.WithEndpointSubject(subj)); err != nil {
			return fmt.Errorf("endpoint %s: %w", subj, err)
		}
	}
	return v.serveCallout()
}

// handler runs h in its own goroutine (bounded by Workers) and answers with
// its result as JSON, or an error reply.
func (v *Verifier) handler(subj string, h func(context.Context, []byte) (any, error)) micro.HandlerFunc {
	return func(req micro.Request) {
		v.workMu.Lock()
		if v.stopping {
			v.workMu.Unlock()
			_ = req.Error("unavailable", "the verifier is stopping: retry", nil)
			return
		}
		v.work.Add(1)
		v.workMu.Unlock()
		v.sem <- struct{}{}
		// Read everything from req before the handler returns: micro reads
		// the request's state after this function returns, so the reply is
		// published on the connection directly, never through req.
		reply, headers, data := req.Reply(), req.Headers(), req.Data()
		go func() {
			defer v.work.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			var audited atomic.Bool
			ctx = context.WithValue(withRequester(ctx, headers), auditWaitKey{}, &audited)
			start := time.Now()
			resp, err := h(ctx, data)
			<-v.sem
			if audited.Load() {
				v.waitAudit("subject", subj)
			}
			v.respond(reply, subj, resp, err, time.Since(start))
		}()
	}
}

// respond answers a request the way micro's Request.Respond and Error do
// (error code and description in the service error headers), from any
// goroutine. micro's own $SRV.STATS error counts therefore stay at zero;
// errors are counted in the verifier's metrics (tpmauthn_requests_total).
func (v *Verifier) respond(reply, subj string, resp any, err error, took time.Duration) {
	v.served.Add(1)
	v.metrics.observe(subj, err, took)
	msg := &nats.Msg{Subject: reply}
	if err != nil {
		code, text := errorCode(err)
		v.log.Info("request denied", "subject", subj, "code", code, "error", err)
		msg.Data, _ = json.Marshal(api.ErrorResponse{Error: text, Code: code})
		msg.Header = nats.Header{micro.ErrorHeader: {text}, micro.ErrorCodeHeader: {code}}
	} else if b, merr := json.Marshal(resp); merr != nil {
		msg.Header = nats.Header{micro.ErrorHeader: {"internal error"}, micro.ErrorCodeHeader: {"internal"}}
	} else {
		msg.Data = b
	}
	if reply == "" {
		return
	}
	if perr := v.nc.PublishMsg(msg); perr != nil {
		v.log.Warn("reply not sent", "subject", subj, "error", perr)
	}
}

// errorCode maps an error to the stable code and the message a client sees.
// Unknown errors are internal and their text stays in the log.
func errorCode(err error) (string, string) {
	table := []struct {
		err  error
		code string
	}{
		{ErrBadRequest, api.CodeBadRequest},
		{attestation.ErrMalformed, api.CodeBadRequest},
		{record.ErrTransition, api.CodeBadRequest},
		{ErrTokenInvalid, api.CodeTokenInvalid},
		{ErrNotAllowed, api.CodeNotAllowed},
		{attestation.ErrEKUntrusted, api.CodeEKUntrusted},
		{attestation.ErrActivationFailed, api.CodeActivationFailed},
		{attestation.ErrAttestation, api.CodeAttestationRejected},
		{ErrAlreadyEnrolled, api.CodeAlreadyEnrolled},
		{ErrHostNotActive, api.CodeHostNotActive},
		{ErrChallenge, api.CodeChallengeInvalid},
		{ErrNotFound, api.CodeNotFound},
		{ErrUnknownCredential, api.CodeUnknownCredential},
		{ErrRevoked, api.CodeRevoked},
		{ErrReplay, api.CodeReplay},
		{ErrNoRoles, api.CodeNoRoles},
		{attestation.ErrAssertion, api.CodeAssertionRejected},
		{ErrConflict, api.CodeConflict},
	}
	for _, e := range table {
		if errors.Is(err, e.err) {
			return e.code, e.err.Error()
		}
	}
	return api.CodeInternal, "internal error"
}

func decode(b []byte, v any) error {
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%w: %w", ErrBadRequest, err)
	}
	return nil
}
