// Package natsapi serves the verifier's request-reply endpoints over NATS
// (the v1 enrollment and registration service the workload account imports,
// and the operator API): NATS micro services, a bounded pool of handler
// goroutines, the audit wait after a handler returns, and the error replies
// with their stable codes. The services themselves (verifier/enroll,
// verifier/register, verifier/admin) only map a request body to a reply.
package natsapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/attestation"
	"github.com/tpmauthn/tpmauthn/verifier/auditlog"
	"github.com/tpmauthn/tpmauthn/verifier/record"
)

// Handler answers one request: its reply (encoded as JSON) or an error.
type Handler func(ctx context.Context, body []byte) (any, error)

// Endpoint is a handler on its subject.
type Endpoint struct {
	Subject string
	Handler Handler
	// Name is the micro endpoint's name (default: the subject without the
	// prefix, dots made dashes; give one for a subject with wildcards).
	Name string
	// Label names the endpoint in metrics and logs (default: Subject).
	Label string
}

type observer interface {
	Observe(subject, result string, took time.Duration)
}

// Config is what the server needs.
type Config struct {
	Conn       *nats.Conn
	QueueGroup string // shared by every verifier instance: each request is served once
	Version    string
	Workers    int // requests handled at once
	Trail      *auditlog.Trail
	Metrics    observer
	// Health, if set, is told each request's error (nil: success), which
	// says whether the store takes writes (verifier/health).
	Health interface{ Observe(error) }
	Logger *slog.Logger
	// Timeout bounds one handler (10s).
	Timeout time.Duration
}

// Server serves endpoints until Close.
type Server struct {
	cfg    Config
	log    *slog.Logger
	sem    chan struct{}
	svcs   []micro.Service
	served atomic.Uint64

	mu       sync.Mutex
	stopping bool
	work     sync.WaitGroup // handlers in flight
}

// New makes a server; Serve adds services to it.
func New(cfg Config) *Server {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 10 * time.Second
	}
	return &Server{cfg: cfg, log: cfg.Logger, sem: make(chan struct{}, max(cfg.Workers, 1))}
}

// Serve starts a micro service named name with the endpoints. An endpoint's
// micro name is its subject without prefix, dots made dashes.
func (s *Server) Serve(name, description, prefix string, endpoints []Endpoint) error {
	svc, err := micro.AddService(s.cfg.Conn, micro.Config{Name: name, Version: s.cfg.Version,
		QueueGroup: s.cfg.QueueGroup, Description: description})
	if err != nil {
		return fmt.Errorf("start service %s: %w", name, err)
	}
	s.svcs = append(s.svcs, svc)
	for _, e := range endpoints {
		ename := e.Name
		if ename == "" {
			ename = strings.ReplaceAll(strings.TrimPrefix(e.Subject, prefix), ".", "-")
		}
		label := e.Label
		if label == "" {
			label = e.Subject
		}
		if err := svc.AddEndpoint(ename, s.handler(label, e.Handler), micro.WithEndpointSubject(e.Subject)); err != nil {
			return fmt.Errorf("endpoint %s: %w", e.Subject, err)
		}
	}
	return nil
}

type subjectKey struct{}

// RequestSubject is the subject the request was sent to (an endpoint's
// subject may have wildcards: the server enforced who may publish to it).
func RequestSubject(ctx context.Context) string {
	s, _ := ctx.Value(subjectKey{}).(string)
	return s
}

// Served is how many requests this server answered.
func (s *Server) Served() uint64 { return s.served.Load() }

// Close stops the services, refuses what arrives meanwhile and waits for the
// handlers in flight (and their audit waits).
func (s *Server) Close() {
	for _, svc := range s.svcs {
		_ = svc.Stop()
	}
	s.mu.Lock()
	s.stopping = true
	s.mu.Unlock()
	s.work.Wait()
}

// Handle runs h for one request (the micro handler of an endpoint); for
// tests, which call it directly.
func (s *Server) Handle(subj string, h Handler) micro.HandlerFunc { return s.handler(subj, h) }

// handler runs h in its own goroutine (bounded by Workers) and answers with
// its result as JSON, or an error reply.
func (s *Server) handler(subj string, h Handler) micro.HandlerFunc {
	return func(req micro.Request) {
		s.mu.Lock()
		if s.stopping {
			s.mu.Unlock()
			_ = req.Error(api.CodeUnavailable, "the verifier is stopping: retry", nil)
			return
		}
		s.work.Add(1)
		s.mu.Unlock()
		s.sem <- struct{}{}
		// Read everything from req before the handler returns: micro reads
		// the request's state after this function returns, so the reply is
		// published on the connection directly, never through req.
		reply, data, subject := req.Reply(), req.Data(), req.Subject()
		go func() {
			defer s.work.Done()
			ctx, cancel := context.WithTimeout(context.Background(), s.cfg.Timeout)
			defer cancel()
			ctx, audited := auditlog.DeferWait(context.WithValue(ctx, subjectKey{}, subject))
			start := time.Now()
			resp, err := h(ctx, data)
			<-s.sem
			if audited.Load() {
				s.cfg.Trail.Wait("subject", subj)
			}
			s.respond(reply, subj, resp, err, time.Since(start))
		}()
	}
}

// respond answers a request the way micro's Request.Respond and Error do
// (error code and description in the service error headers), from any
// goroutine. micro's own $SRV.STATS error counts therefore stay at zero;
// errors are counted in the verifier's metrics (tpmauthn_requests_total).
func (s *Server) respond(reply, subj string, resp any, err error, took time.Duration) {
	s.served.Add(1)
	msg, result := Answer(reply, resp, err)
	if err != nil {
		s.log.Info("request denied", "subject", subj, "code", result, "error", err)
	}
	s.cfg.Metrics.Observe(subj, result, took)
	if s.cfg.Health != nil {
		s.cfg.Health.Observe(err)
	}
	if reply == "" {
		return
	}
	if perr := s.cfg.Conn.PublishMsg(msg); perr != nil {
		s.log.Warn("reply not sent", "subject", subj, "error", perr)
	}
}

// Answer is the reply to a request on reply: resp as JSON, or err's code
// and message in the service error headers (as micro's Request.Error), and
// the result to count ("ok" or the code). For endpoints that answer later
// than their handler returns (verifier/nudge).
func Answer(reply string, resp any, err error) (*nats.Msg, string) {
	msg := &nats.Msg{Subject: reply}
	if err != nil {
		code, text := Code(err)
		msg.Data, _ = json.Marshal(api.ErrorResponse{Error: text, Code: code})
		msg.Header = nats.Header{micro.ErrorHeader: {text}, micro.ErrorCodeHeader: {code}}
		return msg, code
	}
	b, merr := json.Marshal(resp)
	if merr != nil {
		msg.Header = nats.Header{micro.ErrorHeader: {"internal error"}, micro.ErrorCodeHeader: {api.CodeInternal}}
		return msg, api.CodeInternal
	}
	msg.Data = b
	return msg, "ok"
}

// libraryCodes maps the errors of packages below the verifier's own
// vocabulary (api.Error) to codes.
var libraryCodes = []struct {
	err  error
	code string
}{
	{attestation.ErrMalformed, api.CodeBadRequest},
	{record.ErrTransition, api.CodeBadRequest},
	{attestation.ErrEKUntrusted, api.CodeEKUntrusted},
	{attestation.ErrActivationFailed, api.CodeActivationFailed},
	{attestation.ErrAKCertExpired, api.CodeAttestationRejected}, // says which, before the general case
	{attestation.ErrAttestation, api.CodeAttestationRejected},
	{attestation.ErrAssertion, api.CodeAssertionRejected},
}

// Code maps an error to the stable code and the message a client sees: the
// code of the first api.Error it wraps, or of one of the attestation and
// record errors, with the whole error's text (what was wrong, not only
// "bad request"), made safe for a header. Anything else is internal, and
// its text stays in the log.
func Code(err error) (code, message string) {
	var ae *api.Error
	if errors.As(err, &ae) {
		return ae.Code, headerSafe(err.Error())
	}
	for _, e := range libraryCodes {
		if errors.Is(err, e.err) {
			return e.code, headerSafe(err.Error())
		}
	}
	return api.CodeInternal, "internal error"
}

// maxErrorText bounds the message a refusal carries in its header.
const maxErrorText = 1024

// headerSafe keeps a message to one header line: control characters (a
// CR LF would start a header of the requester's choosing, from a name it
// sent) become spaces, and it is cut at maxErrorText bytes.
func headerSafe(s string) string {
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, s)
	if len(s) > maxErrorText {
		s = strings.ToValidUTF8(s[:maxErrorText], "") + "…"
	}
	return s
}

// Decode reads a JSON request strictly: an unknown field is a bad request.
func Decode(b []byte, v any) error {
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%w: %w", api.ErrBadRequest, err)
	}
	return nil
}
