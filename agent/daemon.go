package agent

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tpmauthn/tpmauthn/agent/tpm"
	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/attestation"
	"github.com/tpmauthn/tpmauthn/internal/natstls"
	"github.com/tpmauthn/tpmauthn/internal/promserve"
)

// DefaultSocket is where workloads find the agent.
const DefaultSocket = "/run/tpmauthn/agent.sock"

// Config configures the agent daemon.
type Config struct {
	TPM     string // TPM address: /dev/tpmrm0 (default) or swtpm://host:port
	DataDir string // required
	NATSURL string // the fleet's NATS (the verifier's)
	// NATSCA is a PEM bundle to verify the NATS server with. Empty: the CA
	// the join token pinned (kept in DataDir at enrollment), else the
	// system's roots. Beyond loopback the agent never connects in clear.
	NATSCA    string
	TokenFile string // join token for the first start
	Hostname  string // default os.Hostname
	// RPID, if set, is the WebAuthn RP ID this agent expects: it refuses to
	// register credentials for a verifier that names another.
	RPID   string
	Socket string // DefaultSocket
	// Listener, when set, is used instead of creating Socket (systemd
	// socket activation passes one).
	Listener  net.Listener
	Workloads []Workload
	// RequestTimeout bounds a socket request, TPM queue wait included (5s).
	RequestTimeout time.Duration
	// ApprovalPoll is how often a pending host asks whether it was approved.
	ApprovalPoll time.Duration
	Logger       *slog.Logger
	// Ready is called once the socket serves (sd_notify READY).
	Ready func()
	// MetricsListen serves Prometheus metrics at http://ADDR/metrics.
	MetricsListen string
	// RotationCheck is how often the agent asks the verifier which
	// credentials to rotate, and looks up the accounts of people's
	// credentials (1m).
	RotationCheck time.Duration
	// NoCredentialsWatch: do not hold a credentials.watch at the verifier
	// (agent/nudge.go); operators' changes then reach the host at its next
	// RotationCheck.
	NoCredentialsWatch bool
}

func (c *Config) setDefaults() {
	if c.Socket == "" {
		c.Socket = DefaultSocket
	}
	if c.Hostname == "" {
		c.Hostname, _ = os.Hostname()
	}
	if c.RequestTimeout == 0 {
		c.RequestTimeout = 5 * time.Second
	}
	if c.RotationCheck == 0 {
		c.RotationCheck = time.Minute
	}
	if c.ApprovalPoll == 0 {
		c.ApprovalPoll = 5 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

// Validate reports every problem at once.
func (c *Config) Validate() error {
	var errs []error
	if c.DataDir == "" {
		errs = append(errs, errors.New("data_dir: required"))
	}
	if c.NATSURL == "" {
		errs = append(errs, errors.New("nats_url: required (the fleet's NATS server, where tpmauthn-verifier serves)"))
	}
	if err := validateWorkloads(c.Workloads); err != nil {
		errs = append(errs, err)
	}
	if c.RotationCheck < 0 {
		errs = append(errs, fmt.Errorf("rotation_check: %v, want a positive duration (0: 1m)", c.RotationCheck))
	}
	return errors.Join(errs...)
}

// Agent is the host daemon.
type Agent struct {
	cfg   Config
	log   *slog.Logger
	auth  *Authenticator
	tp    *tpm.TPM
	queue *tpmQueue
	trust *serverTrust // how the NATS server is verified
	// tpmHealth: whether the TPM answered its last command (/healthz).
	tpmHealth tpmHealth
	peers     *peerIdentifier
	srv       *http.Server
	ln        net.Listener

	// ctx is the agent's own run context, from Start until Close: the
	// rotation loop, scheduled deletions and the NATS signer live on it, not
	// on a caller's context. Close cancels it, then waits for wg, which
	// counts every goroutine the agent starts (the TPM queue owns its worker).
	ctx     context.Context
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	started atomic.Bool
	closed  atomic.Bool

	closeOnce sync.Once
	closeErr  error

	metrics *agentMetrics
	// unknownLogged is when an unknown caller was last logged (Unix s).
	unknownLogged atomic.Int64
	// crowdLogged is when a uid over its connection cap was last logged.
	crowdLogged atomic.Int64
	// refusalLogged: when a refusal was last logged, per workload and
	// reason (refusalKey -> *atomic.Int64, Unix s).
	refusalLogged sync.Map
	metricsSrv    *promserve.Server

	ncMu   sync.Mutex // guards nc's creation
	mu     sync.Mutex
	enroll *Enrollment
	creds  map[string]*Credential  // workload -> its current credential
	down   map[string]*unavailable // workload -> why it has no usable credential
	people map[uint32]*Credential  // uid -> its person's credential (agent/person.go)
	// lastCheck is the verifier's last answer to the credential check
	// (agent/status.go).
	lastCheck checkRecord
	// personSem lets one person's login register at a time; loginLimit
	// bounds how often each uid may try.
	personSem  chan struct{}
	loginLimit *loginLimiter
	nc         *nats.Conn // host-credential session to the verifier
	// nudged wakes the rotation loop: the verifier answered a
	// credentials.watch with a change (agent/nudge.go).
	nudged chan struct{}
}

// New checks the configuration.
func New(cfg Config) (*Agent, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	trust, err := loadServerTrust(cfg)
	if err != nil {
		return nil, err
	}
	q := newTPMQueue(256)
	return &Agent{nudged: make(chan struct{}, 1), cfg: cfg, log: cfg.Logger, queue: q, peers: newPeerIdentifier(), creds: map[string]*Credential{}, down: map[string]*unavailable{},
		people: map[uint32]*Credential{}, personSem: make(chan struct{}, 1), loginLimit: newLoginLimiter(), metrics: newAgentMetrics(q), trust: trust}, nil
}

// Run opens the TPM, enrolls if needed, makes sure every configured workload
// has a registered credential, and serves the socket until ctx ends.
func (a *Agent) Run(ctx context.Context) error {
	if err := a.Start(ctx); err != nil {
		return err
	}
	<-ctx.Done()
	return a.Close()
}

// Start does what Run does and returns once the socket serves. ctx bounds
// the start (enrollment, registrations); what runs afterwards lives until
// Close, whatever becomes of ctx. Start may be called once; if it fails, it
// has closed the agent, and a further Close is harmless.
func (a *Agent) Start(ctx context.Context) (err error) {
	if a.closed.Load() || !a.started.CompareAndSwap(false, true) {
		return errors.New("agent: Start may be called once, before Close")
	}
	// Keeps ctx's values, not its cancellation: a caller's start deadline
	// must not stop an agent that serves.
	a.ctx, a.cancel = context.WithCancel(context.WithoutCancel(ctx))
	defer func() {
		if err != nil {
			_ = a.Close()
		}
	}()
	tp, err := tpm.Open(a.cfg.TPM)
	if err != nil {
		return err
	}
	a.tp = tp
	tp.SetObserver(func(command string, took time.Duration, err error) {
		a.metrics.observeTPM(command, took, err)
		a.tpmHealth.observe(err)
	})
	if n := tp.StaleTransientAtOpen(); n > 0 {
		a.log.Warn("flushed transient TPM objects left by an earlier process", "count", n)
	}
	if a.auth, err = NewAuthenticator(tp, a.cfg.DataDir); err != nil {
		return err
	}
	a.metrics.watchAKCertificate(a.auth.AKCertificate)
	a.queue.start()
	if err := a.untilReachable(ctx, "enrollment", a.ensureEnrolled); err != nil {
		return err
	}
	if err := a.untilReachable(ctx, "credentials", a.ensureCredentials); err != nil {
		return err
	}
	if err := a.loadPeople(); err != nil {
		a.log.Warn("people's credentials not loaded: they log in again", "error", err)
	}
	// What the verifier says of the credentials now (one revoked while the
	// agent was stopped must not be presented even once), before serving;
	// the rotation loop asks again every RotationCheck.
	if err := a.checkCredentials(ctx); err != nil {
		a.log.Warn("credential status check failed; retried at the next check", "error", err)
	}
	if err := a.serve(); err != nil {
		return err
	}
	if a.cfg.MetricsListen != "" {
		srv, err := promserve.Start(a.cfg.MetricsListen, a.metrics.reg)
		if err != nil {
			return err
		}
		a.metricsSrv = srv
	}
	if err := a.retireReplaced(); err != nil {
		a.log.Warn("cannot list credentials to delete retired ones", "error", err)
	}
	a.wg.Go(func() { a.rotateLoop(a.ctx) })
	a.wg.Go(func() { a.peopleLoop(a.ctx) })
	if !a.cfg.NoCredentialsWatch {
		a.wg.Go(func() { a.watchLoop(a.ctx) })
	}
	if a.cfg.Ready != nil {
		a.cfg.Ready()
	}
	return nil
}

// Close stops the agent and waits for everything it started: it stops
// serving (requests in flight get 5 s), the rotation loop and the scheduled
// deletions, waits for the TPM job in flight, then closes the NATS session
// and the TPM. A rotation step that must not be cut short (a NATS connect,
// the wait for register.finish's reply) can hold it for up to 20 s, which
// is less harm than a half-done rotation. It is idempotent and safe after a
// failed Start, or none;
// every call returns the first one's result. It must not run concurrently
// with Start.
func (a *Agent) Close() error {
	a.closeOnce.Do(func() { a.closeErr = a.close() })
	return a.closeErr
}

func (a *Agent) close() error {
	a.closed.Store(true)
	var errs []error
	if a.cancel != nil {
		// First, so that a rotation stops early and a NATS handshake signed
		// from now on is refused instead of queued for the TPM.
		a.cancel()
	}
	a.metricsSrv.Stop()
	if a.srv != nil {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if err := a.srv.Shutdown(sctx); err != nil {
			// Requests still running after the grace period: drop their
			// connections. The queue's close below answers their TPM jobs.
			errs = append(errs, fmt.Errorf("stop serving: %w", err), a.srv.Close())
		}
		cancel()
	}
	// Before the queue closes and the TPM with it: a rotation in flight
	// uses both.
	a.wg.Wait()
	a.queue.close()
	a.ncMu.Lock()
	if a.nc != nil {
		a.nc.Close()
	}
	a.ncMu.Unlock()
	if a.tp != nil {
		errs = append(errs, a.tp.Close())
	}
	return errors.Join(errs...)
}

// ensureEnrolled enrolls with the join token on first start and waits for
// approval if the verifier holds the host pending.
func (a *Agent) ensureEnrolled(ctx context.Context) error {
	e, err := a.auth.Enrollment()
	if errors.Is(err, ErrNotEnrolled) {
		e, err = a.enrollWithToken(ctx)
	}
	if err != nil {
		return err
	}
	for e.Status == api.HostPending {
		a.log.Info("waiting for an operator to approve this host", "host", e.HostID, "hint", "tpmauthnctl host approve "+e.HostID)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(a.cfg.ApprovalPoll):
		}
		if e, err = a.withEnrollSession(func(nc *nats.Conn) (*Enrollment, error) { return a.auth.CheckEnrollment(ctx, nc) }); err != nil {
			return err
		}
	}
	if e.Status != api.HostActive {
		return fmt.Errorf("host %s is %s at the verifier", e.HostID, e.Status)
	}
	if a.cfg.RPID != "" && e.RPID != a.cfg.RPID {
		return fmt.Errorf("the verifier's RP ID is %q but this agent expects %q (--rp-id): is it the right verifier?", e.RPID, a.cfg.RPID)
	}
	a.mu.Lock()
	a.enroll = e
	a.mu.Unlock()
	return nil
}

func (a *Agent) readToken() (string, error) {
	if a.cfg.TokenFile == "" {
		return "", errors.New("this host is not enrolled and no join token is configured: create one with 'tpmauthnctl token create --roles ...' and pass it with --token-file")
	}
	if fi, err := os.Stat(a.cfg.TokenFile); err == nil && fi.Mode().Perm()&0o006 != 0 {
		// Anyone on the host could enroll a host of their own with it first.
		return "", fmt.Errorf("join token file %s is readable or writable by every user (mode %v): chmod 600 it, or create it with (umask 077; tpmauthnctl token create ... > FILE)",
			a.cfg.TokenFile, fi.Mode().Perm())
	}
	b, err := os.ReadFile(a.cfg.TokenFile)
	if err != nil {
		return "", fmt.Errorf("join token: %w", err)
	}
	t := strings.TrimSpace(string(b))
	if t == "" {
		return "", fmt.Errorf("join token file %s is empty", a.cfg.TokenFile)
	}
	return t, nil
}

// withEnrollSession runs f on an enrollment session: before enrollment it
// is opened with the join token; afterwards (while the host waits for
// approval, or has yet to register its host credential) with the host ID and
// the activation secret, which only this TPM could have recovered.
func (a *Agent) withEnrollSession(f func(*nats.Conn) (*Enrollment, error)) (*Enrollment, error) {
	var opt, inbox nats.Option
	pin := ""
	if e, err := a.auth.Enrollment(); err == nil {
		opt = nats.UserInfo(api.HostUserPrefix+e.HostID, b64url(e.Proof))
		inbox = nats.CustomInboxPrefix(api.InboxForHost(e.HostID))
	} else {
		token, err := a.readToken()
		if err != nil {
			return nil, err
		}
		var secret string
		secret, pin = api.SplitJoinToken(token)
		opt, inbox = nats.Token(secret), nats.CustomInboxPrefix(api.InboxForToken(secret))
	}
	tlsOpts, err := a.trust.options(a.cfg.NATSURL, pin, func(err error) {
		a.log.Warn("cannot keep the NATS CA the join token pinned; later connections need --nats-ca", "error", err)
	})
	if err != nil {
		return nil, fmt.Errorf("join token: %w", err)
	}
	nc, err := nats.Connect(a.cfg.NATSURL, append(tlsOpts, nats.Name("tpmauthn-agent enrollment"), opt, inbox, nats.Timeout(10*time.Second), nats.MaxReconnects(0))...)
	if err != nil {
		if errors.Is(err, nats.ErrAuthorization) {
			return nil, fmt.Errorf("connect to %s for enrollment: %w (is the join token valid and unused? tpmauthnctl token list)", a.cfg.NATSURL, err)
		}
		return nil, fmt.Errorf("connect to %s for enrollment: %w", a.cfg.NATSURL, natstls.Explain(a.cfg.NATSURL, err))
	}
	defer nc.Close()
	return f(nc)
}

func (a *Agent) enrollWithToken(ctx context.Context) (*Enrollment, error) {
	token, err := a.readToken()
	if err != nil {
		return nil, err
	}
	a.log.Info("enrolling with the verifier", "nats", a.cfg.NATSURL, "hostname", a.cfg.Hostname)
	e, err := a.withEnrollSession(func(nc *nats.Conn) (*Enrollment, error) {
		secret, _ := api.SplitJoinToken(token)
		return a.auth.Enroll(ctx, nc, secret, a.cfg.Hostname)
	})
	if err != nil {
		return nil, err
	}
	a.log.Info("enrolled", "host", e.HostID, "status", e.Status)
	if e.Status == api.HostActive {
		// Register the host credential now, on the host proof's session
		// (the join token's may only enroll): it is how the agent reaches
		// the verifier afterwards.
		if _, err := a.withEnrollSession(func(nc *nats.Conn) (*Enrollment, error) {
			_, err := a.auth.RegisterWithVerifier(ctx, nc, agentWorkload)
			return nil, err
		}); err != nil {
			return nil, fmt.Errorf("register the host credential: %w", err)
		}
	}
	return e, nil
}

// latest returns the newest local credential of a workload, one a rotation
// has not replaced if there is one.
func (a *Agent) latest(workload string) (*Credential, error) {
	creds, err := a.auth.Credentials()
	if err != nil {
		return nil, err
	}
	var replaced *Credential
	for i := len(creds) - 1; i >= 0; i-- {
		if creds[i].Name != workload {
			continue
		}
		if creds[i].Retires.IsZero() {
			return creds[i], nil
		}
		if replaced == nil {
			replaced = creds[i]
		}
	}
	if replaced != nil {
		return replaced, nil
	}
	return nil, ErrUnknownCredential
}

// ensureCredentials creates and registers, at start, a credential for every
// configured workload that lacks one. At start rather than on first use: a
// registration costs a key creation, a certify and two verifier round trips,
// which must not land inside a NATS handshake (about 2 s of budget).
func (a *Agent) ensureCredentials(ctx context.Context) error {
	if _, err := a.latest(agentWorkload); errors.Is(err, ErrUnknownCredential) {
		// Approved after a wait: a host proof's session registers it.
		if _, err := a.withEnrollSession(func(nc *nats.Conn) (*Enrollment, error) {
			_, err := a.auth.RegisterWithVerifier(ctx, nc, agentWorkload)
			return nil, err
		}); err != nil {
			return fmt.Errorf("register the host credential: %w", err)
		}
	}
	hc, err := a.latest(agentWorkload)
	if err != nil {
		return fmt.Errorf("host credential: %w", err)
	}
	a.mu.Lock()
	a.creds[agentWorkload] = hc
	a.mu.Unlock()
	for _, w := range a.cfg.Workloads {
		if err := a.ensureWorkload(ctx, w.Name); err != nil {
			return err
		}
	}
	return nil
}

// ensureWorkload makes sure a workload has a credential, registering one if
// it has none. Only an error that may go away by itself (the verifier not
// reachable: untilReachable retries) fails the start: any other marks the
// workload unavailable, and the agent serves the others.
func (a *Agent) ensureWorkload(ctx context.Context, workload string) error {
	if a.workloadDown(workload) != nil {
		return nil // an earlier try of this start settled it
	}
	c, err := a.latest(workload)
	switch {
	case err == nil && !c.Revoked.IsZero():
		a.mu.Lock()
		a.creds[workload] = c
		a.mu.Unlock()
		a.setUnavailable(workload, revokedWorkload(workload, c.IDString()))
		return nil
	case err == nil:
		a.useCredential(workload, c)
		return nil
	case !errors.Is(err, ErrUnknownCredential):
		// The data directory cannot be read: nothing to retry.
		a.setUnavailable(workload, &unavailable{status: http.StatusServiceUnavailable,
			msg: "workload " + workload + "'s credentials cannot be read: " + err.Error(), hint: "see the agent's log; restart it once fixed"})
		return nil
	}
	err = a.registerWorkload(ctx, workload)
	if err == nil || transient(err) {
		return err
	}
	a.log.Warn("registration failed", "workload", workload, "error", err)
	var states []api.CredentialState
	if nc, cerr := a.verifierConn(); cerr == nil {
		host := a.hostID()
		states, _ = credentialStates(ctx, nc, host)
	}
	a.registrationFailed(workload, err, states)
	return nil
}

// verifierConn returns the agent's own NATS session, authenticated like a
// workload's: the host credential signs each connection's nonce.
func (a *Agent) verifierConn() (*nats.Conn, error) {
	// ncMu, not mu: nats.Connect calls the signer, which takes mu.
	a.ncMu.Lock()
	defer a.ncMu.Unlock()
	if a.nc != nil && !a.nc.IsClosed() {
		return a.nc, nil
	}
	a.mu.Lock()
	hc := a.creds[agentWorkload]
	a.mu.Unlock()
	if hc == nil {
		return nil, errors.New("host credential: not registered")
	}
	nc, err := a.connectAs(hc)
	if errors.Is(err, nats.ErrAuthorization) {
		// An interrupted rotation of the host credential leaves a newest
		// one the verifier never registered: try the others, and the next
		// rotation check reconciles.
		if nc = a.connectWithAnother(hc); nc == nil {
			a.mu.Lock()
			a.creds[agentWorkload] = hc
			a.mu.Unlock()
		}
	}
	if nc == nil && errors.Is(err, nats.ErrAuthorization) {
		host := a.hostID()
		return nil, fmt.Errorf("%w (see tpmauthnctl host show %s; once resolved, re-enroll with a new join token): %w", ErrHostRefused, host, err)
	}
	if nc == nil {
		return nil, fmt.Errorf("connect to %s with the host credential: %w", a.cfg.NATSURL, err)
	}
	a.nc = nc
	return nc, nil
}

// connectAs connects with host credential hc, which it makes current (the
// signer reads the current one on every connect, rotations included).
func (a *Agent) connectAs(hc *Credential) (*nats.Conn, error) {
	a.mu.Lock()
	a.creds[agentWorkload] = hc
	a.mu.Unlock()
	tlsOpts, err := a.trust.options(a.cfg.NATSURL, "", nil)
	if err != nil {
		return nil, err
	}
	return nats.Connect(a.cfg.NATSURL, append(tlsOpts, nats.Name("tpmauthn-agent"),
		nats.Nkey(hc.NKey(), func(nonce []byte) ([]byte, error) {
			// The agent's context: nats.go calls this from its reconnect
			// goroutine too, and after Close begins that must not wait for
			// the TPM.
			// A signature later than the handshake's budget is wasted.
			ctx, cancel := context.WithTimeout(a.ctx, min(a.cfg.RequestTimeout, api.NATSSignBudget))
			defer cancel()
			a.mu.Lock()
			cur := a.creds[agentWorkload] // the current one, after rotations too
			a.mu.Unlock()
			return a.natsSig(ctx, agentWorkload, cur.ID, nonce)
		}),
		nats.CustomInboxPrefix(api.InboxForCredential(hc.NKey())),
		nats.Timeout(5*time.Second), nats.CustomReconnectDelay(a.reconnectDelay))...)
}

// reconnectDelay is 2 to 2.5 s (what nats.go's defaults with the jitter
// this agent used gave), then a turn at the TPM, as the workloads take one
// (agent/client): the agent's own handshake must not be refused in a storm
// of its workloads'.
func (a *Agent) reconnectDelay(int) time.Duration {
	select {
	case <-time.After(2*time.Second + rand.N(500*time.Millisecond)):
	case <-a.ctx.Done():
		return 0
	}
	ctx, cancel := context.WithTimeout(a.ctx, turnTimeout)
	defer cancel()
	_ = a.queue.Turn(ctx, agentWorkload) // none: the handshake says why
	return 0
}

// connectWithAnother tries the other local host credentials, newest first.
func (a *Agent) connectWithAnother(refused *Credential) *nats.Conn {
	creds, err := a.auth.Credentials()
	if err != nil {
		return nil
	}
	for i := len(creds) - 1; i >= 0; i-- {
		c := creds[i]
		if c.Name != agentWorkload || c.IDString() == refused.IDString() {
			continue
		}
		if nc, err := a.connectAs(c); err == nil {
			a.log.Warn("the verifier refused the newest host credential; connected with an earlier one (an interrupted rotation?)",
				"refused", refused.IDString(), "using", c.IDString())
			return nc
		}
	}
	return nil
}

// natsSig signs a NATS nonce through the TPM queue and returns the bundle.
func (a *Agent) natsSig(ctx context.Context, workload string, credID, nonce []byte) ([]byte, error) {
	if len(nonce) == 0 {
		return nil, errors.New("the NATS server sent no nonce: it must require nonces (an nkey user or auth callout with a verifier user)")
	}
	var as *attestation.Assertion
	err := a.queue.DoNATS(ctx, workload, func() error {
		var err error
		as, err = a.auth.AssertForVerifier(credID, attestation.NATSChallenge(nonce))
		return err
	})
	a.metrics.assertion(workload, "nats", err)
	if err != nil {
		return nil, err
	}
	return attestation.MarshalBundle(as)
}

// serve listens on the socket (or the activated listener) and serves the API.
func (a *Agent) serve() error {
	ln := a.cfg.Listener
	if ln == nil {
		if err := os.MkdirAll(filepath.Dir(a.cfg.Socket), 0o755); err != nil {
			return fmt.Errorf("socket directory: %w", err)
		}
		var err error
		if ln, err = listenSocket(a.cfg.Socket); err != nil {
			return err
		}
	}
	ln = limitPerUID(ln, maxConnsPerUID, func(uid uint32) {
		if now := time.Now().Unix(); now-a.crowdLogged.Load() >= 60 {
			a.crowdLogged.Store(now)
			a.log.Warn("socket connection refused: this uid holds too many (further ones logged at most once a minute)", "uid", uid, "max", maxConnsPerUID)
		}
	})
	a.ln = ln
	a.srv = newSocketServer(a.routes(), a.connContext, socketIdleTimeout)
	a.wg.Go(func() {
		if err := a.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			a.log.Error("socket server stopped", "error", err)
		}
	})
	a.log.Info("serving workloads", "socket", ln.Addr().String(), "workloads", len(a.cfg.Workloads))
	return nil
}

// listenSocket creates the socket, mode 0666 (every local user may ask; the
// peer credentials decide who gets what), without ever changing a mode
// through path: a root agent's chmod follows symlinks, and whoever can write
// the socket's directory could swap the fresh socket for a link to
// /etc/shadow between the bind and the chmod. So the socket is bound and
// chmod-ed in a directory of its own that nobody else can write, then
// renamed into place (rename replaces a link, never follows it).
func listenSocket(path string) (net.Listener, error) {
	private, err := os.MkdirTemp(filepath.Dir(path), ".tpmauthn-agent-*")
	if err != nil {
		return nil, fmt.Errorf("socket directory: %w", err)
	}
	defer os.RemoveAll(private)
	tmp := filepath.Join(private, "agent.sock")
	ln, err := net.Listen("unix", tmp)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false) // it moves: Close must not unlink the new path's socket
	fail := func(err error) (net.Listener, error) {
		_ = ln.Close()
		return nil, err
	}
	if err := os.Chmod(tmp, 0o666); err != nil {
		return fail(fmt.Errorf("socket permissions: %w", err))
	}
	if socketCreated != nil {
		socketCreated(tmp)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fail(fmt.Errorf("put the socket at %s: %w", path, err))
	}
	return &unlinkOnClose{Listener: ln, path: path}, nil
}

// Addr is the socket's final path, not the private one it was made at.
func (l *unlinkOnClose) Addr() net.Addr { return &net.UnixAddr{Name: l.path, Net: "unix"} }

// socketCreated is a test hook: an attacker's move while the socket is made.
var socketCreated func(tmp string)

// unlinkOnClose removes the socket at its final path when closed, if it is
// still ours.
type unlinkOnClose struct {
	net.Listener
	path string
	once sync.Once
}

func (l *unlinkOnClose) Close() error {
	err := l.Listener.Close()
	l.once.Do(func() { _ = os.Remove(l.path) })
	return err
}

// socketIdleTimeout closes a keep-alive connection idle this long: every
// local user may connect to the socket, and an idle connection must not hold
// a file descriptor (and a goroutine) for good.
const socketIdleTimeout = 30 * time.Second

// newSocketServer is the socket API's HTTP server: bounded headers, bounded
// time to send a request (a request body is at most 4 KB), idle connections
// closed.
func newSocketServer(h http.Handler, connCtx func(context.Context, net.Conn) context.Context, idle time.Duration) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		IdleTimeout:       idle,
		MaxHeaderBytes:    8 << 10,
		ConnContext:       connCtx,
	}
}

func b64url(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

// MetricsAddr is where /metrics is served, or "".
func (a *Agent) MetricsAddr() string {
	if a.metricsSrv == nil {
		return ""
	}
	return a.metricsSrv.Addr()
}

// Authenticator is the agent's authenticator (for tools and tests).
func (a *Agent) Authenticator() *Authenticator { return a.auth }
