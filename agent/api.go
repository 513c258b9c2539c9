package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/tpmauthn/tpmauthn/agent/tpm"
	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/attestation"
	"github.com/tpmauthn/tpmauthn/internal/natstls"
)

// The socket API (its types are api's: WhoAmI, AssertionRequest,
// NATSSignRequest and NATSSignResponse, AgentError): HTTP/1.1 + JSON over a
// Unix socket. Callers are named by their peer credentials.

type ctxKey struct{}

// peerConn is a connection to the socket and when it was accepted (boot
// clock ticks): a caller must have started before it.
type peerConn struct {
	c        *net.UnixConn
	accepted uint64
}

// connContext attaches the connection to each request's context, for the
// peer lookup.
func (a *Agent) connContext(ctx context.Context, c net.Conn) context.Context {
	if u, ok := c.(interface{ Unwrap() net.Conn }); ok { // the per-uid cap's wrapper
		c = u.Unwrap()
	}
	uc, _ := c.(*net.UnixConn)
	return context.WithValue(ctx, ctxKey{}, peerConn{uc, bootTicks()})
}

const maxRequestBody = 4096

func (a *Agent) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+api.AgentPathHealth, a.healthz)
	mux.HandleFunc("GET "+api.AgentPathWhoAmI, a.withCaller(a.whoami))
	mux.HandleFunc("GET "+api.AgentPathStatus, a.withPeer(a.cfg.RequestTimeout, a.status))
	mux.HandleFunc("POST "+api.AgentPathAssertion, a.withCaller(a.assertion))
	mux.HandleFunc("POST "+api.AgentPathNATSSign, a.withCaller(a.natsSign))
	mux.HandleFunc("POST "+api.AgentPathNATSTurn, a.withCallerFor(turnTimeout, a.natsTurn))
	mux.HandleFunc("GET "+api.AgentPathPersonLogin, a.withPeer(a.cfg.RequestTimeout, a.personPlace))
	mux.HandleFunc("POST "+api.AgentPathPersonLogin, a.withPeer(personTimeout, a.personLogin))
	mux.HandleFunc("DELETE "+api.AgentPathPersonLogin, a.withPeer(a.cfg.RequestTimeout, a.personLogout))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeErr(w, http.StatusNotFound, "no such endpoint", "try GET /v1/whoami, POST /v1/assertion, POST /v1/nats/sign, POST /v1/nats/turn, GET|POST|DELETE /v1/person/login, GET /healthz")
	})
	return mux
}

// caller is an identified request.
type caller struct {
	peer     *Peer
	workload string
	cred     *Credential
}

// turnTimeout bounds a wait for a turn: a host's whole storm of handshakes
// (50 signatures at a real TPM's ~250 ms mean) fits in it.
const turnTimeout = 30 * time.Second

func (a *Agent) withCaller(h func(http.ResponseWriter, *http.Request, *caller)) http.HandlerFunc {
	return a.withCallerFor(a.cfg.RequestTimeout, h)
}

// withCallerFor names the caller, then runs h with a context that ends at
// the caller's deadline (api.AgentHeaderDeadline) or after timeout,
// whichever comes first.
func (a *Agent) withCallerFor(timeout time.Duration, h func(http.ResponseWriter, *http.Request, *caller)) http.HandlerFunc {
	return a.withPeer(timeout, func(w http.ResponseWriter, r *http.Request, p *Peer) {
		name, cred, ok := a.callerCredential(w, p)
		if ok {
			h(w, r, &caller{peer: p, workload: name, cred: cred})
		}
	})
}

// withPeer names the calling process, then runs h with a context that ends
// at the caller's deadline (api.AgentHeaderDeadline) or after timeout,
// whichever comes first.
func (a *Agent) withPeer(timeout time.Duration, h func(http.ResponseWriter, *http.Request, *Peer)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		pc, ok := r.Context().Value(ctxKey{}).(peerConn)
		if !ok || pc.c == nil {
			writeErr(w, http.StatusForbidden, "not a Unix socket connection", "")
			return
		}
		p, err := a.peers.identify(pc.c, pc.accepted)
		if err != nil {
			a.log.Warn("caller not identified", "error", err)
			writeErr(w, http.StatusForbidden, "cannot identify the calling process", err.Error())
			return
		}
		deadline := time.Now().Add(timeout)
		if v := r.Header.Get(api.AgentHeaderDeadline); v != "" {
			ms, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				writeErr(w, http.StatusBadRequest, api.AgentHeaderDeadline+" must be Unix milliseconds", "")
				return
			}
			if d := time.UnixMilli(ms); d.Before(deadline) {
				deadline = d
			}
		}
		ctx, cancel := context.WithDeadline(r.Context(), deadline)
		defer cancel()
		h(w, r.WithContext(ctx), p)
	}
}

// callerCredential is the credential the caller signs with: its configured
// workload's, or else its uid's person's (agent/person.go). It answers the
// refusal itself.
func (a *Agent) callerCredential(w http.ResponseWriter, p *Peer) (string, *Credential, bool) {
	name, err := resolve(a.cfg.Workloads, p)
	if err != nil {
		pc, perr := a.personFor(p)
		if pc != nil {
			return personName(p.UID), pc, true
		}
		if errors.Is(perr, errAccountUnnamed) {
			writeErr(w, http.StatusServiceUnavailable, perr.Error(), fmt.Sprintf("retry; check the host's name service: getent passwd %d", p.UID))
			return "", nil, false
		}
		if perr != nil {
			writeErr(w, http.StatusForbidden, perr.Error(), "log in again: tpmauthnctl login")
			return "", nil, false
		}
		// Any local user can make these: at most one line a minute.
		if now := time.Now().Unix(); now-a.unknownLogged.Load() >= 60 {
			a.unknownLogged.Store(now)
			a.log.Warn("unknown caller refused (further ones logged at most once a minute)", "caller", p.String())
		}
		writeErr(w, http.StatusForbidden, "no workload matches this caller: "+p.String(),
			"add a workloads entry to the agent's config whose match selects this process (uid, user, exe, systemd_unit, ...), or log in as a person: tpmauthnctl login")
		return "", nil, false
	}
	a.mu.Lock()
	cred, down := a.creds[name], a.down[name]
	a.mu.Unlock()
	if down != nil {
		writeErr(w, down.status, down.msg, down.hint)
		return "", nil, false
	}
	if cred == nil {
		writeErr(w, http.StatusServiceUnavailable, "workload "+name+" has no credential yet", "the agent registers credentials at start; see its log")
		return "", nil, false
	}
	return name, cred, true
}

// natsTurn answers once a NATS handshake of the caller's workload may
// start: see agent/turnstile.go.
func (a *Agent) natsTurn(w http.ResponseWriter, r *http.Request, c *caller) {
	// The server notices a client that leaves only once the body is read:
	// a turn request with one would be held until its timeout.
	if r.ContentLength != 0 {
		writeErr(w, http.StatusBadRequest, "a turn request has no body", "send POST "+api.AgentPathNATSTurn+" with an empty body")
		return
	}
	if err := a.queue.Turn(r.Context(), c.workload); err != nil {
		a.tpmErr(w, c, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (a *Agent) healthz(w http.ResponseWriter, _ *http.Request) {
	a.mu.Lock()
	e := a.enroll
	a.mu.Unlock()
	body := map[string]any{"status": "ok", "enrolled": e != nil, "tpm_queue": a.queue.Depth(), "nats_turns_waiting": a.queue.TurnsWaiting()}
	if e != nil {
		body["host"] = e.HostID
	}
	if down, since, err := a.tpmHealth.state(); down {
		body["status"], body["since"], body["error"], body["hint"] = "tpm_unavailable", since.UTC(), err, tpmUnavailableHint
		respondJSON(w, http.StatusServiceUnavailable, body)
		return
	}
	respondJSON(w, http.StatusOK, body)
}

func (a *Agent) whoami(w http.ResponseWriter, _ *http.Request, c *caller) {
	a.mu.Lock()
	e := a.enroll
	a.mu.Unlock()
	respondJSON(w, http.StatusOK, api.WhoAmI{Workload: c.workload, Host: e.HostID, CredentialID: c.cred.IDString(), NKey: c.cred.NKey(), Inbox: api.InboxForCredential(c.cred.NKey()), RPID: e.RPID, Caller: (*api.Caller)(c.peer),
		NATSCA: string(a.trust.PEM()), NATSTLSRequired: !natstls.Loopback(a.cfg.NATSURL), NATSURL: a.cfg.NATSURL, Person: c.cred.Person})
}

func decodeBody(r *http.Request, v any) error {
	dec := json.NewDecoder(io.LimitReader(r.Body, maxRequestBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("request body: %w", err)
	}
	return nil
}

func (a *Agent) assertion(w http.ResponseWriter, r *http.Request, c *caller) {
	var req api.AssertionRequest
	if err := decodeBody(r, &req); err != nil {
		writeErr(w, http.StatusBadRequest, err.Error(), `send {"challenge": "<base64url>"}`)
		return
	}
	chal, err := attestation.DecodeB64URL(req.Challenge)
	if err != nil || len(chal) < 16 || len(chal) > 1024 {
		writeErr(w, http.StatusBadRequest, "challenge must be base64url of 16 to 1024 bytes", "")
		return
	}
	var as *attestation.Assertion
	err = a.queue.Do(r.Context(), c.workload, func() error {
		var err error
		as, err = a.auth.Assert(c.cred.ID, chal)
		return err
	})
	a.metrics.assertion(c.workload, "webauthn", err)
	if err != nil {
		a.tpmErr(w, c, err)
		return
	}
	respondJSON(w, http.StatusOK, as.JSON())
}

func (a *Agent) natsSign(w http.ResponseWriter, r *http.Request, c *caller) {
	var req api.NATSSignRequest
	if err := decodeBody(r, &req); err != nil {
		writeErr(w, http.StatusBadRequest, err.Error(), `send {"nonce": "<the nonce from the server's INFO>"}`)
		return
	}
	if req.Nonce == "" || len(req.Nonce) > 256 {
		writeErr(w, http.StatusBadRequest, "nonce must be 1 to 256 bytes", "")
		return
	}
	bundle, err := a.natsSig(r.Context(), c.workload, c.cred.ID, []byte(req.Nonce))
	if err != nil {
		a.tpmErr(w, c, err)
		return
	}
	respondJSON(w, http.StatusOK, api.NATSSignResponse{NKey: c.cred.NKey(), Sig: b64url(bundle)})
}

func (a *Agent) tpmErr(w http.ResponseWriter, c *caller, err error) {
	switch {
	case errors.Is(err, ErrCredentialRevoked):
		a.logRefusal(c.workload, "revoked", err)
		u := revokedWorkload(c.workload, c.cred.IDString())
		writeErr(w, u.status, u.msg, u.hint)
	case errors.Is(err, ErrBusy):
		a.logRefusal(c.workload, "busy", err)
		writeRetry(w, http.StatusTooManyRequests, err, "back off and retry")
	case errors.Is(err, ErrOverloaded):
		a.logRefusal(c.workload, "expected_wait", err)
		writeRetry(w, http.StatusServiceUnavailable, err, "the TPM is busy: come back after retry_after_ms")
	case errors.Is(err, ErrDeadline), errors.Is(err, context.DeadlineExceeded):
		a.logRefusal(c.workload, "deadline", err)
		writeRetry(w, http.StatusServiceUnavailable, err, "the TPM is busy; retry")
	case errors.Is(err, tpm.ErrUnavailable):
		a.logRefusal(c.workload, "tpm_unavailable", err)
		writeErr(w, http.StatusServiceUnavailable, "the TPM could not sign: "+err.Error(), tpmUnavailableHint)
	default:
		a.logRefusal(c.workload, "tpm_error", err)
		writeErr(w, http.StatusServiceUnavailable, "the TPM could not sign: "+err.Error(), "check the agent's log and the TPM")
	}
}

// refusalKey names a kind of refusal to one workload, for logRefusal.
type refusalKey struct{ workload, reason string }

// logRefusal logs a refusal at most once a minute per workload and reason:
// a workload can make the TPM refuse it as often as it likes (a flood of
// requests), and the metrics count every one
// (tpmauthn_agent_tpm_refused_total). Workloads are the config's, so the
// map stays small.
func (a *Agent) logRefusal(workload, reason string, err error) {
	v, _ := a.refusalLogged.LoadOrStore(refusalKey{workload, reason}, new(atomic.Int64))
	last := v.(*atomic.Int64)
	now := time.Now().Unix()
	if l := last.Load(); now-l < 60 || !last.CompareAndSwap(l, now) {
		return
	}
	a.log.Warn("signature refused (further ones for this workload and reason logged at most once a minute)",
		"workload", workload, "reason", reason, "error", err)
}

func respondJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// writeRetry refuses for a busy TPM, saying when to come back if err
// knows (a *RetryError): Retry-After in whole seconds, rounded up, as HTTP
// has it, and retry_after_ms.
func writeRetry(w http.ResponseWriter, status int, err error, hint string) {
	e := api.AgentError{Error: ErrDeadline.Error(), Hint: hint}
	var re *RetryError
	if errors.As(err, &re) {
		e.Error = re.Err.Error()
		e.RetryAfterMS = max(1, re.After.Milliseconds())
		w.Header().Set("Retry-After", strconv.FormatInt(int64(math.Ceil(re.After.Seconds())), 10))
	} else if errors.Is(err, ErrBusy) || errors.Is(err, ErrOverloaded) {
		e.Error = err.Error()
	}
	respondJSON(w, status, e)
}

func writeErr(w http.ResponseWriter, status int, msg, hint string) {
	respondJSON(w, status, api.AgentError{Error: msg, Hint: hint})
}
