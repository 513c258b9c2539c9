// Package callout is the NATS auth-callout transport (NATS ADR-26): it takes
// the servers' authorization requests off $SYS.REQ.USER.AUTH, opens and
// validates them, asks a Decider (the authn registry) for the decision,
// audits it, and answers with a signed user JWT or a generic denial, sealed
// to the server's xkey. It decides nothing itself.
package callout

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"

	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/audit"
	"github.com/tpmauthn/tpmauthn/verifier/authn"
)

// Subject is where nats-server sends auth-callout requests (in the
// AUTH account).
const Subject = "$SYS.REQ.USER.AUTH"

// errDenied is the generic reason sent back in a callout response; the
// client only ever sees "Authorization Violation", the specific reason goes
// to the log (and, later, the audit trail).
var errDenied = errors.New("authorization failed")

// calloutBudget is how long a client waits for its CONNECT to be answered:
// nats.go fails the handshake on the server's first PING, about 2 s after it
// connected, whatever authorization.timeout says. A request older than this
// is not worth its decryption.
const calloutBudget = 2 * time.Second

// lifoAfter is the age of the oldest queued request beyond which the queue
// serves the newest first.
const lifoAfter = 500 * time.Millisecond

// Decider decides a connect (authn.Registry).
type Decider interface {
	Decide(ctx context.Context, r *authn.Request) (*jwt.UserClaims, error)
}

// recorder is the audit trail (auditlog.Trail): Record queues a decision's
// event, and Unavailable says when the trail cannot take events, so that
// no grant outruns its record (fail closed).
type recorder interface {
	Record(audit.Event)
	RecordDurable(ctx context.Context, e audit.Event) error
	Unavailable() error
}

type serverSet interface {
	KnownServer(ctx context.Context, id string) bool
}

type observer interface {
	Observe(subject, result string, took time.Duration)
	Shed()
}

// Config is what the transport needs.
type Config struct {
	Conn       *nats.Conn    // the verifier's user in the auth account
	QueueGroup string        // shared by every verifier instance
	Issuer     nkeys.KeyPair // signs user JWTs and responses
	XKey       nkeys.KeyPair // opens sealed requests
	Decider    Decider
	// Health, if set, is told each decision's error (nil: granted), which
	// says whether the store takes writes (verifier/health).
	Health interface{ Observe(error) }
	// Servers, if set, vouches for the issuer of each request: only the
	// fleet's servers may ask (nil: any that seals to our xkey).
	Servers serverSet
	Trail   recorder
	Metrics observer
	Workers int
	// OnDecision, if set, is told each decision's time and error (nil:
	// granted).
	OnDecision func(took time.Duration, err error)
	Logger     *slog.Logger
}

// Server answers callouts until Close.
type Server struct {
	cfg    Config
	log    *slog.Logger
	xbox   *xkeyBox
	queue  *calloutQueue
	sub    *nats.Subscription
	ctx    context.Context // the decisions' parent: ends with Close
	cancel context.CancelFunc
	done   chan struct{}
	wg     sync.WaitGroup
	served atomic.Uint64
	shed   atomic.Uint64
	once   sync.Once
	denied *denials
}

// New makes the transport; Start subscribes.
func New(cfg Config) (*Server, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	xbox, err := newXKeyBox(cfg.XKey)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Server{cfg: cfg, log: cfg.Logger, xbox: xbox, ctx: ctx, cancel: cancel, done: make(chan struct{}),
		queue: &calloutQueue{wake: make(chan struct{}, 1)}, denied: newDenials(cfg.Trail, denialWindow)}, nil
}

// serveCallout takes requests off the subscription at once and serves them
// oldest first while the oldest is younger than lifoAfter, newest first
// beyond (adaptive LIFO): in a reconnect storm a first-in-first-out queue
// grows until every request in it has outlived its client's patience, and
// then nothing gets through; newest-first keeps serving requests that can
// still succeed and sheds the stale ones cheaply. Under ordinary load
// first-in-first-out keeps the tail short (measured at 256 concurrent
// clients, always newest-first: p99 626 ms against the approve-all
// responder's 271 ms).
func (s *Server) Start() error {
	sub, err := s.cfg.Conn.QueueSubscribe(Subject, s.cfg.QueueGroup, s.queue.push)
	if err != nil {
		return fmt.Errorf("subscribe %s: %w", Subject, err)
	}
	s.sub = sub
	for range max(s.cfg.Workers, 1) {
		s.wg.Go(func() {
			for {
				m, at, ok := s.queue.pop(s.done)
				if !ok {
					return
				}
				if time.Since(at) > calloutBudget {
					s.shedOne()
					continue
				}
				s.handle(m, at)
			}
		})
	}
	return nil
}

// Close stops taking requests, lets the workers finish the decision each is
// making and waits for them. Requests still queued are left unanswered (the
// server times their clients out; they reconnect to another instance).
func (s *Server) Close() {
	s.once.Do(func() {
		if s.sub != nil {
			_ = s.sub.Unsubscribe()
		}
		close(s.done)
		s.wg.Wait()
		s.cancel()
		s.denied.close()
	})
}

// Served is how many callouts this server answered.
func (s *Server) Served() uint64 { return s.served.Load() }

// Shed is how many callouts it dropped because their clients had stopped
// waiting.
func (s *Server) Shed() uint64 { return s.shed.Load() }

// calloutQueue is a stack of requests with their arrival times, bounded: the
// oldest are dropped first.
type calloutQueue struct {
	mu    sync.Mutex
	items []queued
	wake  chan struct{}
}

type queued struct {
	m  *nats.Msg
	at time.Time
}

const maxQueuedCallouts = 1 << 16

func (q *calloutQueue) push(m *nats.Msg) {
	q.mu.Lock()
	if len(q.items) >= maxQueuedCallouts {
		q.items = append(q.items[:0], q.items[len(q.items)/2:]...) // drop the older half
	}
	q.items = append(q.items, queued{m, time.Now()})
	q.mu.Unlock()
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// pop returns the oldest request, or the newest once the oldest has waited
// lifoAfter, waiting for one until done is closed.
func (q *calloutQueue) pop(done chan struct{}) (*nats.Msg, time.Time, bool) {
	for {
		q.mu.Lock()
		if n := len(q.items); n > 0 {
			var it queued
			if time.Since(q.items[0].at) < lifoAfter {
				it, q.items[0] = q.items[0], queued{}
				q.items = q.items[1:]
			} else {
				it = q.items[n-1]
				q.items = q.items[:n-1]
			}
			more := n > 1
			q.mu.Unlock()
			if more {
				select { // pass the wake-up on to another worker
				case q.wake <- struct{}{}:
				default:
				}
			}
			return it.m, it.at, true
		}
		q.mu.Unlock()
		select {
		case <-q.wake:
		case <-done:
			return nil, time.Time{}, false
		}
	}
}

// handle answers one auth-callout request: open, validate, decide, sign
// and seal the response. The decision's context ends when the client stops
// waiting: the request's expiry, or calloutBudget after it arrived.
func (s *Server) handle(m *nats.Msg, arrived time.Time) {
	start := time.Now()
	serverXKey := m.Header.Get("Nats-Server-Xkey")
	rc, err := s.open(m.Data, serverXKey)
	if err != nil {
		s.log.Warn("callout: request refused unanswered", "error", err)
		return // the server times the client out
	}
	// Shed what the server no longer waits for: in a reconnect storm
	// requests queue up, and answering expired ones late only delays the
	// fresh ones behind them.
	if rc.Expires != 0 && time.Now().Unix() >= rc.Expires {
		s.shedOne()
		return
	}
	deadline := arrived.Add(calloutBudget)
	// Expires is in whole seconds, rounded down: the server waits until up
	// to a second after it.
	if exp := time.Unix(rc.Expires+1, 0); rc.Expires != 0 && exp.Before(deadline) {
		deadline = exp
	}
	ctx, cancel := context.WithDeadline(s.ctx, deadline)
	defer cancel()
	ev := audit.Deny("connect")
	ev.Server, ev.Client, ev.ClientAddr = rc.Server.ID, rc.ClientInformation.ID, rc.ClientInformation.Host
	if s.cfg.Servers != nil && !s.cfg.Servers.KnownServer(ctx, rc.Server.ID) {
		// Not a server of ours: someone who may publish on the callout
		// subject made the request. Answered by nobody, audited.
		ev.Reason = "callout request issued by " + rc.Server.ID + ", which is not a server of this NATS system"
		s.log.Warn("callout: request from an unknown issuer refused unanswered", "issuer", rc.Server.ID)
		s.denied.record(ev)
		return
	}
	var out []byte
	grantErr := s.cfg.Trail.Unavailable()
	if grantErr == nil {
		out, grantErr = s.decide(ctx, rc, &ev, serverXKey)
	}
	if grantErr != nil {
		s.log.Info("connect denied", "client", rc.ClientInformation.ID, "host", rc.ClientInformation.Host, "reason", grantErr)
		ev.Result, ev.Reason = audit.DenyText, grantErr.Error()
		if out, err = s.encodeResponse(rc, nil, serverXKey); err != nil {
			s.log.Error("callout: sign the denial", "error", err)
		}
		s.denied.record(ev)
	}
	s.served.Add(1)
	took := time.Since(start)
	result := "ok"
	if grantErr != nil {
		result = "denied"
	}
	s.cfg.Metrics.Observe(Subject, result, took)
	if s.cfg.Health != nil {
		s.cfg.Health.Observe(grantErr)
	}
	if s.cfg.OnDecision != nil {
		s.cfg.OnDecision(took, grantErr)
	}
	if out != nil {
		_ = m.Respond(out)
	}
}

// open decrypts (when the server sealed it) and validates a request.
func (s *Server) open(data []byte, serverXKey string) (*jwt.AuthorizationRequestClaims, error) {
	// Every server of the layout seals its requests (the auth_callout block
	// names the verifier's xkey): an unsealed one did not come from one.
	if serverXKey == "" {
		return nil, errors.New("unsealed: the request names no server xkey, and the layout requires one")
	}
	data, err := s.xbox.Open(data, serverXKey)
	if err != nil {
		return nil, fmt.Errorf("cannot decrypt: %w", err)
	}
	rc, err := s.decodeRequest(string(data), serverXKey)
	if err != nil {
		return nil, fmt.Errorf("malformed: %w", err)
	}
	if err := checkRequest(rc); err != nil {
		return nil, fmt.Errorf("invalid: %w", err)
	}
	return rc, nil
}

// decide asks the decider and, for a grant, returns the signed response:
// the one prepared while the decider wrote its record if it grants those
// very claims, or one signed now. The grant's audit event is stored
// meanwhile too (started when the decider prepares, so that its append and
// the decider's last write share the wait), and the response is returned
// only once the event is durable: no session without its record.
func (s *Server) decide(ctx context.Context, rc *jwt.AuthorizationRequestClaims, ev *audit.Event, serverXKey string) ([]byte, error) {
	var pre *preparedGrant
	var stored chan error // the allow event's append, once started
	var storedEv audit.Event
	user, err := s.cfg.Decider.Decide(ctx, &authn.Request{Claims: rc, Event: ev, Prepare: func(uc *jwt.UserClaims) {
		pre = s.prepareGrant(rc, uc, serverXKey)
		switch {
		case stored == nil:
		case slices.Equal(storedEv.Roles, ev.Roles):
			return // the event stored says what this grant would
		default:
			// Decided again (the record changed: a regroup's fence) with
			// other roles: the trail must not keep the first attempt's.
			s.withdrawOnce(stored, storedEv, errDecidedAgain)
		}
		stored, storedEv = s.storeGrant(ctx, *ev), *ev
	}})
	if err != nil {
		if stored != nil { // its allow event may land: say it never took effect
			s.withdraw(*ev, err)
		}
		return nil, err
	}
	if stored == nil { // a method that does not prepare
		stored = s.storeGrant(ctx, *ev)
	}
	var out []byte
	if pre != nil && pre.uc == user {
		out, err = pre.wait()
	} else {
		out, err = s.encodeResponse(rc, user, serverXKey)
	}
	if err != nil {
		s.log.Error("callout: sign the grant", "error", err)
		s.withdraw(*ev, err)
		return nil, err
	}
	if err := <-stored; err != nil {
		s.withdraw(*ev, err)
		return nil, fmt.Errorf("%w: the audit trail did not store the grant in time: %w", api.ErrUnavailable, err)
	}
	return out, nil
}

// storeGrant appends ev as the grant's allow event; the channel gets the
// result once it is durable (or not).
func (s *Server) storeGrant(ctx context.Context, ev audit.Event) chan error {
	ev.Result = audit.Allow
	done := make(chan error, 1)
	go func() { done <- s.cfg.Trail.RecordDurable(ctx, ev) }()
	return done
}

// errDecidedAgain: a decision's last write was retried with other roles.
var errDecidedAgain = errors.New("decided again with other roles")

// withdrawOnce withdraws ev once its append (stored) has succeeded: an
// allow event that never landed needs no withdrawal.
func (s *Server) withdrawOnce(stored chan error, ev audit.Event, why error) {
	s.wg.Go(func() { // counted: Close waits for the withdrawal to be queued
		if <-stored == nil {
			s.withdraw(ev, why)
		}
	})
}

// withdraw records that a grant whose allow event may be in the trail was
// not sent.
func (s *Server) withdraw(ev audit.Event, why error) {
	ev.Kind, ev.Result = ev.Kind+".withdrawn", audit.DenyText
	ev.Reason = "grant withdrawn before it was sent: " + why.Error()
	s.cfg.Trail.Record(ev)
}

// encodeResponse signs the callout response — the user JWT for a grant, the
// generic error for a denial (user nil) — and seals it to the server's xkey.
func (s *Server) encodeResponse(rc *jwt.AuthorizationRequestClaims, user *jwt.UserClaims, serverXKey string) ([]byte, error) {
	resp := jwt.NewAuthorizationResponseClaims(rc.UserNkey)
	resp.Audience = rc.Server.ID
	if user == nil {
		resp.Error = errDenied.Error()
	} else {
		var err error
		if resp.Jwt, err = user.Encode(s.cfg.Issuer); err != nil {
			return nil, fmt.Errorf("user JWT: %w", err)
		}
	}
	tok, err := resp.Encode(s.cfg.Issuer)
	if err != nil {
		return nil, fmt.Errorf("response: %w", err)
	}
	if serverXKey == "" {
		return []byte(tok), nil
	}
	out, err := s.xbox.Seal([]byte(tok), serverXKey)
	if err != nil {
		return nil, fmt.Errorf("seal: %w", err)
	}
	return out, nil
}

// preparedGrant is a grant's response encoded while the counter is written:
// signing the two JWTs takes about as long as the KV round trip, and with
// both at once a connect waits for the longer only. It is sent only if the
// decision grants these very claims (the compare-and-set may still fail);
// otherwise it is dropped unseen.
type preparedGrant struct {
	uc   *jwt.UserClaims
	done chan struct{}
	out  []byte
	err  error
}

func (s *Server) prepareGrant(rc *jwt.AuthorizationRequestClaims, uc *jwt.UserClaims, serverXKey string) *preparedGrant {
	p := &preparedGrant{uc: uc, done: make(chan struct{})}
	s.wg.Go(func() { // a worker is counted meanwhile: Close waits for this too
		defer close(p.done)
		p.out, p.err = s.encodeResponse(rc, uc, serverXKey)
	})
	return p
}

func (p *preparedGrant) wait() ([]byte, error) {
	<-p.done
	return p.out, p.err
}

// checkRequest: issued by the server that asks, for us, still valid.
func checkRequest(rc *jwt.AuthorizationRequestClaims) error {
	if rc.Issuer != rc.Server.ID || !strings.HasPrefix(rc.Issuer, "N") {
		return fmt.Errorf("issuer %q is not the requesting server %q", rc.Issuer, rc.Server.ID)
	}
	if rc.Audience != "nats-authorization-request" {
		return fmt.Errorf("audience %q", rc.Audience)
	}
	var vr jwt.ValidationResults
	rc.Validate(&vr)
	if vr.IsBlocking(true) {
		return fmt.Errorf("request claims: %v", vr.Errors())
	}
	if rc.UserNkey == "" {
		return errors.New("no user nkey")
	}
	return nil
}

func (s *Server) shedOne() {
	s.shed.Add(1)
	s.cfg.Metrics.Shed()
}
