package verifier

import (
	"cmp"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/attestation"
	"github.com/tpmauthn/tpmauthn/audit"
	"github.com/tpmauthn/tpmauthn/internal/atomicfile"
	"github.com/tpmauthn/tpmauthn/internal/memconn"
	"github.com/tpmauthn/tpmauthn/internal/natstls"
	"github.com/tpmauthn/tpmauthn/internal/promserve"
	"github.com/tpmauthn/tpmauthn/verifier/admin"
	"github.com/tpmauthn/tpmauthn/verifier/alert"
	"github.com/tpmauthn/tpmauthn/verifier/auditlog"
	"github.com/tpmauthn/tpmauthn/verifier/authn"
	"github.com/tpmauthn/tpmauthn/verifier/authn/person"
	"github.com/tpmauthn/tpmauthn/verifier/authn/workload"
	"github.com/tpmauthn/tpmauthn/verifier/callout"
	"github.com/tpmauthn/tpmauthn/verifier/enroll"
	"github.com/tpmauthn/tpmauthn/verifier/fleet"
	"github.com/tpmauthn/tpmauthn/verifier/health"
	"github.com/tpmauthn/tpmauthn/verifier/httpapi"
	"github.com/tpmauthn/tpmauthn/verifier/keys"
	"github.com/tpmauthn/tpmauthn/verifier/metrics"
	"github.com/tpmauthn/tpmauthn/verifier/natsapi"
	"github.com/tpmauthn/tpmauthn/verifier/nudge"
	"github.com/tpmauthn/tpmauthn/verifier/offboard"
	"github.com/tpmauthn/tpmauthn/verifier/oidclogin"
	"github.com/tpmauthn/tpmauthn/verifier/operators"
	"github.com/tpmauthn/tpmauthn/verifier/peers"
	"github.com/tpmauthn/tpmauthn/verifier/people"
	"github.com/tpmauthn/tpmauthn/verifier/policy"
	"github.com/tpmauthn/tpmauthn/verifier/record"
	"github.com/tpmauthn/tpmauthn/verifier/register"
	"github.com/tpmauthn/tpmauthn/verifier/restore"
	"github.com/tpmauthn/tpmauthn/verifier/sessions"
	"github.com/tpmauthn/tpmauthn/verifier/store"
)

// Version of the verifier service (NATS micro).
const Version = "0.1.0"

// queueGroup is shared by every verifier instance: each request is served once.
const queueGroup = "tpmauthn"

// Verifier wires the rooms of the verifier together and owns their
// lifecycles: Start runs its steps in order, and Close undoes what they
// started, in reverse.
type Verifier struct {
	cfg     Config
	keys    *keys.Set
	log     *slog.Logger
	ekTrust *attestation.EKTrust
	rp      *attestation.RelyingParty
	policy  *policy.Source
	metrics *metrics.Metrics
	trust   clientTrust
	// nReplicas of the buckets and the audit stream (Start decides).
	nReplicas int
	// nudges holds agents' credentials.watch requests (verifier/nudge).
	nudges *nudge.Service
	// restored is what Start imported from a staged restore (nil: none).
	restored *restore.Result

	// Set by Start.
	srv        *server.Server // embedded, or nil
	url        string
	nc         *nats.Conn // the verifier's user (AUTH account)
	sysNC      *nats.Conn // system account: events and kicks
	st         *store.Store
	audit      *auditlog.Log
	trail      *auditlog.Trail
	fleet      *fleet.Fleet
	sessions   *sessions.Sessions
	enroll     *enroll.Service
	api        *natsapi.Server // v1: enrollment and registration
	adminAPI   *natsapi.Server // the operator API, with slots of its own
	callout    *callout.Server
	metricsSrv *promserve.Server
	health     *health.Monitor
	people     *people.Service
	personDir  *person.Directory // people as the connect path and the operator API read them
	offboard   *offboard.Service
	login      *oidclogin.Handler // people's logins, or nil
	http       *httpapi.Server    // people's logins, or nil
	httpURL    string
	httpTLS    bool   // http serves TLS
	wsURL      string // the NATS WebSocket listener browsers reach, or ""

	mu        sync.Mutex
	cleanups  []func() // what Start started, undone in reverse by Close
	closed    bool     // Close has begun: a step finishing now is undone at once
	closeOnce sync.Once
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
	if err := keepRPID(cfg.DataDir, cfg.RPID); err != nil {
		return nil, err
	}
	v := &Verifier{cfg: cfg, keys: ks, log: cfg.Logger, metrics: metrics.New()}
	v.metrics.KnownTamperKinds(append(slices.Clone(alert.Kinds), health.AlertStoreUnavailable, auditlog.AlertTruncated, auditlog.AlertRewritten,
		auditlog.AlertCheckpointInvalid, auditlog.AlertNearLimit, auditlog.AlertAppendFailing, peers.AlertOlderVerifier)...)
	if len(created) > 0 {
		v.log.Info("created key material", "data_dir", cfg.DataDir, "files", created)
	}
	if err := v.loadTrust(); err != nil {
		return nil, err
	}
	if cfg.EKCADir != "" {
		if v.ekTrust, err = attestation.LoadEKTrustDir(cfg.EKCADir, v.log); err != nil {
			return nil, fmt.Errorf("enrollment.ek_ca_dir: %w", err)
		}
		if err := pinEKIntermediates(v.ekTrust, cfg.EKIntermediates); err != nil {
			return nil, fmt.Errorf("enrollment.ek_intermediates: %w", err)
		}
	} else {
		v.log.Warn("no EK CA directory configured: EK certificates are not trusted, only the EK allow-list can enroll hosts")
	}
	if v.policy, err = policy.NewSource(cfg.PolicyFile, func(err error) {
		v.log.Error("policy reload failed; keeping the last good policy", "error", err)
	}); err != nil {
		return nil, err
	}
	v.logTrust()
	v.rp, err = attestation.NewRelyingParty(attestation.RPConfig{
		RPID: cfg.RPID, Origins: []string{cfg.Origin}, FleetRoots: []*x509.Certificate{ks.FleetCA},
	})
	if err != nil {
		return nil, err
	}
	return v, nil
}

// Start connects (starting the embedded server first when no NATS URL is
// set), opens the state and serves every endpoint. It returns once the
// verifier is serving; ctx bounds the start only, not what it starts (Close
// stops that). On failure it undoes what it started.
func (v *Verifier) Start(ctx context.Context) error {
	steps := []struct {
		name string
		run  func(context.Context) error
	}{
		{"http listener", v.listenHTTP},
		{"nats-server", v.startServer},
		{"connect", v.connect},
		{"store", v.openStore},
		{"restore", v.importRestore},
		{"audit trail", v.openAudit},
		{"system connection", v.connectSys},
		{"fleet", v.startFleet},
		{"sessions", v.startSessions},
		{"health", v.startHealth},
		{"peers", v.watchPeers},
		{"people", v.openPeople},
		{"endpoints", v.serveEndpoints},
		{"callout", v.serveCallout},
		{"logins", v.servePeople},
		{"flush", v.flush},
		{"metrics", v.serveMetrics},
	}
	for _, s := range steps {
		if err := s.run(ctx); err != nil {
			v.Close()
			return err
		}
	}
	v.writeClientFiles()
	v.log.Info("verifier serving", "nats", v.url, "rp_id", v.cfg.RPID, "approval", v.cfg.Approval)
	return nil
}

// onClose registers what Close must undo for a step that succeeded (at
// once if Close has begun).
func (v *Verifier) onClose(f func()) {
	v.mu.Lock()
	if v.closed {
		v.mu.Unlock()
		f()
		return
	}
	v.cleanups = append(v.cleanups, f)
	v.mu.Unlock()
}

func (v *Verifier) startServer(context.Context) error {
	if v.cfg.NATSURL != "" {
		v.url = v.cfg.NATSURL
		return nil
	}
	extra, clientTLS, err := v.embeddedExtra()
	if err != nil {
		return err
	}
	srv, err := StartEmbedded(v.keys, v.cfg.DataDir, keys.ServerConfigOptions{Listen: v.cfg.NATSListen, Extra: extra, Websocket: v.websocketOptions()}, v.log)
	if err != nil {
		return err
	}
	v.srv, v.url = srv, localURL(srv.Addr(), clientTLS)
	v.wsURL = v.websocketURL(srv)
	v.onClose(func() {
		srv.Shutdown()
		srv.WaitForShutdown()
	})
	v.log.Info("embedded nats-server ready", "url", v.url)
	return nil
}

func (v *Verifier) connect(context.Context) error {
	kp := v.keys.Verifier
	if v.cfg.NATSSeed != "" {
		var err error
		if kp, err = keys.LoadNKey(v.cfg.NATSSeed); err != nil {
			return err
		}
	}
	// The name says which record fields this version keeps: an instance
	// of an older one drops some when it rewrites a record (verifier/peers).
	opts, err := v.connOptions(peers.Name())
	if err != nil {
		return err
	}
	nc, err := nats.Connect(v.dialURL(), append(opts, nats.Nkey(keys.Public(kp), kp.Sign))...)
	if err != nil {
		return fmt.Errorf("connect to NATS at %s as the verifier user: %w", v.url, natstls.Explain(v.dialURL(), err))
	}
	if ver := nc.ConnectedServerVersion(); !versionAtLeast(ver, minServer) {
		nc.Close()
		return fmt.Errorf("nats-server %s at %s is older than %d.%d.%d, which tpmauthn needs (auth callout with xkey, and a subscription's deny enforced on overlapping wildcards): upgrade the servers", ver, v.url, minServer[0], minServer[1], minServer[2])
	}
	v.nc = nc
	v.onClose(func() {
		drained(nc)
		nc.Close()
	})
	return nil
}

// minServer is the oldest nats-server tpmauthn runs on.
var minServer = [3]int{2, 15, 3}

// versionAtLeast reports whether a server version ("2.15.3",
// "2.16.0-beta.1") is at least min; one that does not parse is not.
func versionAtLeast(version string, min [3]int) bool {
	core, _, _ := strings.Cut(version, "-")
	parts := strings.Split(core, ".")
	if len(parts) != 3 {
		return false
	}
	for i, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil {
			return false
		}
		if n != min[i] {
			return n > min[i]
		}
	}
	return true
}

// openStore opens the KV state; a cluster's JetStream may still be electing
// its leader, so it retries a while.
func (v *Verifier) openStore(ctx context.Context) error {
	var err error
	if v.nReplicas, err = v.replicas(ctx); err != nil {
		return err
	}
	return v.untilJetStream(ctx, func(ctx context.Context) (err error) {
		v.st, err = store.Open(ctx, v.nc, store.Options{Replicas: v.nReplicas})
		return err
	})
}

// untilJetStream retries f while JetStream is not ready (a cluster still
// electing its leaders drops API requests rather than answering them):
// each attempt bounded, 30 of them at most.
func (v *Verifier) untilJetStream(ctx context.Context, f func(context.Context) error) error {
	for attempt := 0; ; attempt++ {
		actx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := f(actx)
		cancel()
		if err == nil {
			return nil
		}
		if attempt == 30 || ctx.Err() != nil {
			return err
		}
		if attempt == 0 {
			v.log.Info("waiting for JetStream", "error", err)
		}
		select {
		case <-time.After(500 * time.Millisecond):
		case <-ctx.Done():
		}
	}
}

// auditConfig is the audit stream's and writer's configuration.
func (v *Verifier) auditConfig() auditlog.Config {
	cfg := v.cfg.Audit
	cfg.OnAppend, cfg.Logger = v.metrics.AuditAppended, v.log
	cfg.Replicas = cmp.Or(cfg.Replicas, v.nReplicas)
	if cfg.CheckpointFile == "" {
		cfg.CheckpointFile = filepath.Join(v.cfg.DataDir, auditCheckpointFile)
	}
	return cfg
}

// importRestore imports a restore that tpmauthnctl staged in the data
// directory (verifier/restore), before the audit trail opens and anything
// is served: the restored stream is the one the writer then continues.
func (v *Verifier) importRestore(ctx context.Context) error {
	res, err := restore.Import(ctx, restore.Config{DataDir: v.cfg.DataDir, Store: v.st, Audit: v.auditConfig(),
		AuditKey: keys.Public(v.keys.Issuer), Logger: v.log})
	if err != nil {
		return err
	}
	v.restored = res
	return nil
}

func (v *Verifier) openAudit(ctx context.Context) error {
	cfg := v.auditConfig()
	var a *auditlog.Log
	err := v.untilJetStream(ctx, func(ctx context.Context) (err error) {
		a, err = auditlog.Open(ctx, v.st.JS, v.keys.Issuer, cfg)
		return err
	})
	if err != nil {
		return err
	}
	v.audit, v.trail = a, auditlog.NewTrail(a, v.cfg.Workers, v.log)
	v.metrics.WatchAuditBacklog(v.AuditBacklog)
	v.metrics.WatchAuditStream(a)
	v.onClose(a.Close) // appends what is queued while the connection is open
	// What Open found against the last checkpoint, and what the watch finds
	// later, is published, counted and audited like any tamper signal.
	a.Watch(alert.NewPublisher(v.nc, a, v.metrics, v.log))
	if r := v.restored; r != nil {
		v.trail.Record(audit.Event{Kind: "restore", Result: audit.OK, Actor: "operator",
			Reason: fmt.Sprintf("restored from the backup of %s: %d records, %d audit events (resumed: %v)", r.Created, r.Records, r.Events, r.Resumed)})
	}
	return nil
}

// auditCheckpointFile, in the data directory, is the audit writer's signed
// checkpoint of the chain's head (auditlog.Config.CheckpointFile).
const auditCheckpointFile = "audit-checkpoint.json"

// connectSys opens the system-account connection: the servers' events, and
// kicks.
func (v *Verifier) connectSys(context.Context) error {
	kp := v.keys.Sys
	opts, err := v.connOptions("tpmauthn-verifier-sys")
	if err != nil {
		return err
	}
	nc, err := nats.Connect(v.dialURL(), append(opts, nats.Nkey(keys.Public(kp), kp.Sign))...)
	if err != nil {
		return fmt.Errorf("connect to NATS as the system user (for kicks): %w", err)
	}
	v.sysNC = nc
	v.onClose(func() {
		// The disconnect handlers record audit events: let the ones under
		// way finish before the audit trail closes, and take no more.
		drained(nc)
		nc.Close()
	})
	return nil
}

func (v *Verifier) startFleet(ctx context.Context) error {
	v.fleet = fleet.New(v.st, v.log)
	if err := v.fleet.Start(ctx); err != nil {
		return err
	}
	v.onClose(v.fleet.Close)
	return nil
}

func (v *Verifier) startSessions(ctx context.Context) error {
	only := ""
	if v.srv != nil && v.cfg.ClusterListen == "" { // the embedded server, standalone: it restarts with this process
		only = v.srv.ID()
	}
	v.sessions = sessions.New(sessions.Config{Sys: v.sysNC, Fleet: v.fleet, Trail: v.trail, Only: only,
		Logger: v.log, QueueGroup: queueGroup})
	if err := v.sessions.Start(ctx); err != nil {
		v.sessions.Close()
		return err
	}
	v.onClose(v.sessions.Close)
	return nil
}

// startHealth watches the store: an alert per episode of failed writes, a
// gauge, /healthz, and a probe that ends the episode by itself.
func (v *Verifier) startHealth(context.Context) error {
	v.health = health.New(health.Config{Store: v.st, Alerts: alert.NewPublisher(v.nc, v.trail, v.metrics, v.log),
		Trail: v.trail, Metrics: v.metrics, Audit: v.audit, Logger: v.log})
	v.onClose(v.health.Close)
	return nil
}

// watchPeers raises older_verifier while an instance of an older version
// is connected to the fleet's servers (verifier/peers).
func (v *Verifier) watchPeers(context.Context) error {
	w := peers.New(peers.Config{Conns: v.sessions, Alerts: alert.NewPublisher(v.nc, v.trail, v.metrics, v.log),
		Metrics: v.metrics, Logger: v.log, Every: v.cfg.PeersEvery})
	w.Start()
	v.onClose(w.Close)
	return nil
}

// serveEndpoints serves the v1 service (exported to APP) and the operator
// API, in one queue group with every other instance.
func (v *Verifier) serveEndpoints(context.Context) error {
	alerts := alert.NewPublisher(v.nc, v.trail, v.metrics, v.log)
	v.enroll = enroll.New(enroll.Config{Store: v.st, EKTrust: v.ekTrust, FleetCA: v.keys.FleetCA, FleetCAKey: v.keys.FleetCAKey,
		Approval: v.cfg.Approval, AKCertValidity: v.cfg.AKCertValidity, SessionTTL: v.cfg.EnrollSessionTTL,
		RPID: v.cfg.RPID, Origin: v.cfg.Origin, Trail: v.trail, Alerts: alerts, Misses: v.fleet.Misses, Logger: v.log, Now: v.cfg.Clock})
	reg := register.New(register.Config{Fleet: v.fleet, RP: v.rp, RPID: v.cfg.RPID, Origin: v.cfg.Origin,
		ChallengeTTL: v.cfg.RegisterChallenge, RotationGrace: v.cfg.RotationGrace, MaxAge: v.cfg.CredentialMaxAge,
		Trail: v.trail, Alerts: alerts, AKCerts: v.enroll, People: v.people, Logger: v.log})
	ekRoots := 0
	if v.ekTrust != nil {
		ekRoots = v.ekTrust.Roots()
	}
	nudges, err := nudge.Start(v.nc, queueGroup, v.log)
	if err != nil {
		return err
	}
	v.nudges = nudges
	v.onClose(nudges.Close)
	adm := admin.New(admin.Config{Nudge: nudges.Nudge, Fleet: v.fleet, Sessions: v.sessions, Enroll: v.enroll, Trail: v.trail,
		Version: Version, RPID: v.cfg.RPID, Origin: v.cfg.Origin, Approval: v.cfg.Approval,
		AuditKey: keys.Public(v.keys.Issuer), EKRoots: ekRoots, CAPin: v.trust.pin, AuditStream: auditlog.Stream, Policy: v.policy, Logger: v.log, Now: v.cfg.Clock,
		People: v.people, Offboard: v.offboard})
	v.api = natsapi.New(natsapi.Config{Conn: v.nc, QueueGroup: queueGroup, Version: Version, Workers: v.cfg.Workers,
		Trail: v.trail, Metrics: v.metrics, Health: v.health, Logger: v.log})
	v.onClose(v.api.Close)
	// The begin endpoints store a record that lives SessionTTL in a bounded
	// bucket: each caller may open a burst of them, then one a second.
	beginLimit := natsapi.NewLimiter(time.Second, beginBurst)
	if err := v.api.Serve("tpmauthn", "tpmauthn enrollment and registration", api.SubjectV1Prefix, v1Endpoints(map[string]natsapi.Handler{
		api.OpEnrollBegin:       beginLimit.Wrap(v.enroll.Begin),
		api.OpEnrollFinish:      v.enroll.Finish,
		api.OpEnrollStatus:      v.enroll.Status,
		api.OpRegisterBegin:     beginLimit.Wrap(reg.Begin),
		api.OpRegisterFinish:    reg.Finish,
		api.OpCredentialsStatus: reg.CredentialStatus,
		api.OpPersonLogout:      reg.PersonLogout,
	})); err != nil {
		return err
	}
	// The operator API has worker slots of its own: sessions that flood the
	// v1 endpoints must not lock operators out (they may be revoking them).
	v.adminAPI = natsapi.New(natsapi.Config{Conn: v.nc, QueueGroup: queueGroup, Version: Version, Workers: adminWorkers,
		Trail: v.trail, Metrics: v.metrics, Health: v.health, Logger: v.log})
	v.onClose(v.adminAPI.Close)
	credential := func(ctx context.Context, id string) (*record.Credential, error) {
		// From the leader: a replica behind a revocation or a regroup's
		// fence must not let an operator act on what was taken away.
		c, _, err := store.GetLatest[record.Credential](ctx, v.st.Credentials, id)
		return c, err
	}
	gate := operators.New(operators.Config{Policy: func() *policy.Policy { return v.policy.Current() }, Credential: credential, Roles: v.personDir.Roles,
		Alerts: alerts, Trail: v.trail, Logger: v.log})
	return v.adminAPI.Serve("tpmauthn-admin", "tpmauthn operator API", api.SubjectAdminPrefix, gate.Wrap(adm.Endpoints()))
}

// v1Callers are the kinds of caller each v1 operation is served to: a join
// token's or an EK's session enrolls, a host's agent does the rest. A
// session may only publish to its own scope's subjects (api.Scope), and each
// handler checks the scope again against what the request names.
var v1Callers = map[string][]string{
	api.OpEnrollBegin:       {api.ScopeToken, api.ScopeEK},
	api.OpEnrollFinish:      {api.ScopeToken, api.ScopeEK},
	api.OpEnrollStatus:      {api.ScopeHost},
	api.OpRegisterBegin:     {api.ScopeHost},
	api.OpRegisterFinish:    {api.ScopeHost},
	api.OpCredentialsStatus: {api.ScopeHost},
	api.OpPersonLogout:      {api.ScopeHost},
}

// v1Endpoints serves each operation on its callers' scopes, labeled
// tpmauthn.v1.OP in metrics whoever calls, and answers agents that still
// call the subjects of before scopes with api.ErrUpgradeAgent.
func v1Endpoints(handlers map[string]natsapi.Handler) []natsapi.Endpoint {
	var eps []natsapi.Endpoint
	for _, op := range slices.Sorted(maps.Keys(handlers)) {
		for _, kind := range v1Callers[op] {
			eps = append(eps, natsapi.Endpoint{Subject: api.Endpoint(kind, op), Handler: handlers[op],
				Name: kind + "-" + strings.ReplaceAll(op, ".", "-"), Label: api.SubjectV1Prefix + op})
		}
	}
	upgrade := func(context.Context, []byte) (any, error) { return nil, api.ErrUpgradeAgent }
	for i, subj := range api.LegacyV1Subjects {
		eps = append(eps, natsapi.Endpoint{Subject: subj, Handler: upgrade, Name: fmt.Sprintf("legacy-%d", i), Label: subj})
	}
	return eps
}

// adminWorkers is the operator API's worker slots.
const adminWorkers = 8

// serveCallout answers auth callout with the registry of authentication
// methods: a join token, a workload's assertion, a host's proof, an
// allow-listed EK, asked in that order.
func (v *Verifier) serveCallout(context.Context) error {
	alerts := alert.NewPublisher(v.nc, v.trail, v.metrics, v.log)
	var methods authn.Registry
	token, hostProof, ekAllow := v.enroll.Methods()
	dir := v.personDir
	methods.Add(token, workload.New(workload.Config{Fleet: v.fleet, Sessions: v.sessions, Policy: v.policy,
		RPID: v.cfg.RPID, RotationGrace: v.cfg.RotationGrace, MaxAge: v.cfg.CredentialMaxAge, Alerts: alerts, People: dir, Browser: v.browserChecker(), Logger: v.log}), hostProof, ekAllow)
	co, err := callout.New(callout.Config{Conn: v.nc, QueueGroup: queueGroup, Issuer: v.keys.Issuer, XKey: v.keys.XKey,
		Decider: &methods, Servers: v.sessions, Health: v.health, Trail: v.trail, Metrics: v.metrics, Workers: v.cfg.Workers, OnDecision: v.cfg.OnDecision, Logger: v.log})
	if err != nil {
		return err
	}
	if err := co.Start(); err != nil {
		co.Close()
		return err
	}
	v.callout = co
	v.onClose(co.Close)
	return nil
}

// flush: subscriptions reach the server asynchronously; make sure they did
// before reporting ready.
func (v *Verifier) flush(context.Context) error {
	for _, c := range []*nats.Conn{v.nc, v.sysNC} {
		if err := c.FlushTimeout(5 * time.Second); err != nil {
			return fmt.Errorf("NATS flush: %w", err)
		}
	}
	return nil
}

func (v *Verifier) serveMetrics(context.Context) error {
	if v.cfg.MetricsListen == "" {
		return nil
	}
	srv, err := promserve.Start(v.cfg.MetricsListen, v.metrics.Registry(), promserve.Handler{Path: "/healthz", Handler: v.health})
	if err != nil {
		return err
	}
	v.metricsSrv = srv
	v.onClose(srv.Stop)
	v.log.Info("metrics", "url", "http://"+srv.Addr()+"/metrics", "health", "http://"+srv.Addr()+"/healthz")
	return nil
}

func (v *Verifier) clientURLFile() string {
	_, f := keys.OperatorFiles(v.cfg.DataDir)
	return f
}

// connOptions: the verifier comes back quickly after a server restart (every
// client is waiting for its callouts then), and reports connection trouble
// in its log rather than on stderr.
func (v *Verifier) connOptions(name string) ([]nats.Option, error) {
	var first []nats.Option
	if ip := v.inProcess(); ip != nil {
		// In memory, TLS protects nothing: the server requires none of an
		// in-process client.
		first = []nats.Option{nats.InProcessServer(ip)}
	} else {
		var err error
		if first, err = v.tlsOptions(); err != nil {
			return nil, err
		}
	}
	return append(first,
		nats.Name(name), nats.MaxReconnects(-1), nats.Timeout(5*time.Second),
		nats.ReconnectWait(100*time.Millisecond), nats.ReconnectJitter(100*time.Millisecond, 100*time.Millisecond),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			v.log.Warn("NATS", "connection", name, "error", err)
		}),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				v.log.Warn("NATS disconnected; reconnecting", "connection", name, "error", err)
			}
		}),
	), nil
}

// inProcess is the nats-server the verifier's connections reach in memory:
// the embedded one, or Config.NATSInProcess; nil means TCP to v.url. In
// memory a message skips two system calls and a network poller wake-up at
// each end, which on the connect path (request, compare-and-set, audit
// append, their acks, the response, the disconnect events) is about ten
// messages a connect.
func (v *Verifier) inProcess() nats.InProcessConnProvider {
	switch {
	case v.srv != nil:
		return memconn.Provider(v.srv)
	case v.cfg.NATSInProcess != nil:
		return memconn.Provider(v.cfg.NATSInProcess)
	}
	return nil
}

// dialURL is v.url for the verifier's own connections: in memory, with no
// TLS or WebSocket scheme (nats.go would start a handshake that protects
// nothing, or frame a pipe as a WebSocket).
func (v *Verifier) dialURL() string {
	if v.inProcess() == nil {
		return v.url
	}
	return strings.NewReplacer("tls://", "nats://", "wss://", "nats://", "ws://", "nats://").Replace(v.url)
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

// Close stops serving, waits for the requests in flight and for every
// goroutine the verifier started, appends what the audit trail holds, and
// stops the embedded server: what Start did, undone in reverse. It may be
// called more than once (every call returns once shutdown is complete), and
// after a failed Start.
func (v *Verifier) Close() {
	v.closeOnce.Do(func() {
		v.mu.Lock()
		cleanups := v.cleanups
		v.cleanups, v.closed = nil, true
		v.mu.Unlock()
		for i := len(cleanups) - 1; i >= 0; i-- {
			cleanups[i]()
		}
	})
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

// ClientURL is where clients reach NATS.
func (v *Verifier) ClientURL() string {
	if v.srv != nil {
		return v.url
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

// HeldWatches is how many agents' credentials.watch requests this instance
// holds (0 before Start).
func (v *Verifier) HeldWatches() int {
	if v.nudges == nil {
		return 0
	}
	return v.nudges.Held()
}

// FlushAudit waits until every event recorded so far is in the stream.
func (v *Verifier) FlushAudit() { v.audit.Flush() }

// Served returns how many requests this instance answered (endpoints and
// callouts).
func (v *Verifier) Served() uint64 {
	var n uint64
	if v.adminAPI != nil {
		n += v.adminAPI.Served()
	}
	if v.api != nil {
		n += v.api.Served()
	}
	if v.callout != nil {
		n += v.callout.Served()
	}
	return n
}

// AuditBacklog is the number of audit events recorded but not yet appended.
func (v *Verifier) AuditBacklog() int { return v.audit.Backlog() }

// Shed is the number of callout requests dropped because the server had
// stopped waiting for them.
func (v *Verifier) Shed() uint64 {
	if v.callout == nil {
		return 0
	}
	return v.callout.Shed()
}

// Keys returns the verifier's key material (for tests and tpmauthnctl).
func (v *Verifier) Keys() *keys.Set { return v.keys }

// pinEKIntermediates pins the CA certificates in file (none if file is
// empty); a file without a certificate is an error, as it would refuse
// every EK certificate.
func pinEKIntermediates(t *attestation.EKTrust, file string) error {
	if file == "" {
		return nil
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	certs, err := attestation.ParseCertificates(b)
	if err != nil {
		return fmt.Errorf("%s: %w", file, err)
	}
	t.Pin(certs...)
	return nil
}

// beginBurst is how many enroll.begin and register.begin calls (together) a
// session may make at once, before one a second: an agent registers its
// workloads at start, one begin each. At that rate one session holds at
// most beginBurst + store.SessionTTL/1s (364) live records of about 1 KB,
// far below the buckets' bound (64 MB).
const beginBurst = 64

// logTrust says at start what the verifier trusts, and has each policy
// reload said: a new operator reads here why connects are refused.
func (v *Verifier) logTrust() {
	if v.ekTrust != nil {
		v.log.Info("trusting TPM manufacturers", "ek_ca_dir", v.cfg.EKCADir, "roots", v.ekTrust.Roots())
	}
	file := v.cfg.PolicyFile
	if file == "" {
		v.log.Warn("no policy file (--policy): no role grants anything, every workload connect is refused")
	} else {
		v.log.Info("policy loaded", append([]any{"file", file}, v.policy.Current().Summary()...)...)
	}
	v.policy.OnReload(func(_, p *policy.Policy) {
		v.log.Info("policy reloaded", append([]any{"file", file}, p.Summary()...)...)
	})
}

// rpIDFile keeps the RP ID a data directory's credentials were registered
// for.
const rpIDFile = "rp-id"

// keepRPID records the RP ID at the first start and refuses another one
// later: every credential's assertions name the RP ID they were made for,
// so a changed --rp-id would refuse them all, silently, at every connect.
func keepRPID(dataDir, rpID string) error {
	path := filepath.Join(dataDir, rpIDFile)
	b, err := os.ReadFile(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return atomicfile.Write(path, []byte(rpID+"\n"), 0o644)
	case err != nil:
		return err
	}
	if was := strings.TrimSpace(string(b)); was != rpID {
		return fmt.Errorf("this data directory's credentials were registered for RP ID %q, and --rp-id is %q: every one of them would be refused; start with --rp-id %s (a new fleet needs a new data directory)", was, rpID, was)
	}
	return nil
}
