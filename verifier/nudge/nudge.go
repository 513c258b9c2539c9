package nudge

import (
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/verifier/natsapi"
)

// subjectPrefix + HOST: where instances tell each other a host changed (the
// verifier's account only; no other account imports it).
const subjectPrefix = "tpmauthn.nudge."

// maxPerHost bounds the watches held for one host (an agent holds one; a
// restarted agent may leave one behind until it times out). Past it, the
// oldest is answered "no change" at once.
const maxPerHost = 4

// minWait is the least a watch is held (unless a nudge comes first).
const minWait = 5 * time.Second

// Service holds agents' watches and answers them when their host changes.
type Service struct {
	nc  *nats.Conn
	log *slog.Logger

	mu      sync.Mutex
	waiting map[string][]*watch // host ID → held watches, oldest first
	closed  bool
	subs    []*nats.Subscription
}

type watch struct {
	reply string
	timer *time.Timer
}

// Start serves credentials.watch in queueGroup (each watch is held by one
// instance) and hears every instance's nudges.
func Start(nc *nats.Conn, queueGroup string, log *slog.Logger) (*Service, error) {
	s := &Service{nc: nc, log: log, waiting: map[string][]*watch{}}
	watchSub, err := nc.QueueSubscribe(api.Endpoint(api.ScopeHost, api.OpCredentialsWatch), queueGroup, s.hold)
	if err != nil {
		return nil, fmt.Errorf("serve credentials.watch: %w", err)
	}
	nudgeSub, err := nc.Subscribe(subjectPrefix+"*", func(m *nats.Msg) {
		s.wake(m.Subject[len(subjectPrefix):])
	})
	if err != nil {
		_ = watchSub.Unsubscribe()
		return nil, fmt.Errorf("hear nudges: %w", err)
	}
	s.subs = []*nats.Subscription{watchSub, nudgeSub}
	return s, nil
}

// Nudge tells every instance that host's credentials changed. A host ID
// that is no plain subject token is ignored (IDs are the verifier's own).
func (s *Service) Nudge(host string) {
	if !api.HostScope(host).Valid() {
		return
	}
	if err := s.nc.Publish(subjectPrefix+host, nil); err != nil {
		s.log.Warn("nudge not sent: the host's agent learns the change at its next poll", "host", host, "error", err)
	}
}

// hold answers a watch at once if it is not its host's agent's, else holds
// it until a nudge or its wait.
func (s *Service) hold(m *nats.Msg) {
	var req api.CredentialsWatchRequest
	err := natsapi.Decode(m.Data, &req)
	if err == nil {
		if scope, ok := api.ParseScope(m.Subject); !ok || scope != api.HostScope(req.HostID) {
			err = fmt.Errorf("%w: only host %s's own agent may watch its credentials", api.ErrNotFound, req.HostID)
		}
	}
	if err != nil || m.Reply == "" {
		s.answer(m.Reply, false, err)
		return
	}
	// Not less than minWait: a watch answered at once would only be a
	// request loop (it is outside the v1 endpoints' rate limits).
	wait := min(max(req.Wait, minWait), api.MaxCredentialsWatch)
	if req.Wait <= 0 {
		wait = api.MaxCredentialsWatch
	}
	w := &watch{reply: m.Reply}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		s.answer(m.Reply, false, fmt.Errorf("%w: the verifier is stopping", api.ErrUnavailable))
		return
	}
	held := s.waiting[req.HostID]
	if len(held) >= maxPerHost {
		s.release(held[0], false)
		held = held[1:]
	}
	s.waiting[req.HostID] = append(held, w)
	w.timer = time.AfterFunc(wait, func() { s.expire(req.HostID, w) })
}

// wake answers every watch held for host: it changed.
func (s *Service) wake(host string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, w := range s.waiting[host] {
		s.release(w, true)
	}
	delete(s.waiting, host)
}

// expire answers w "no change" if it is still held.
func (s *Service) expire(host string, w *watch) {
	s.mu.Lock()
	defer s.mu.Unlock()
	held := s.waiting[host]
	for i, x := range held {
		if x == w {
			s.release(w, false)
			s.waiting[host] = append(held[:i:i], held[i+1:]...)
			if len(s.waiting[host]) == 0 {
				delete(s.waiting, host)
			}
			return
		}
	}
}

// release stops w's timer and answers it. Called with s.mu held.
func (s *Service) release(w *watch, changed bool) {
	w.timer.Stop()
	s.answer(w.reply, changed, nil)
}

func (s *Service) answer(reply string, changed bool, err error) {
	if reply == "" {
		return
	}
	msg, _ := natsapi.Answer(reply, api.CredentialsWatchResponse{Changed: changed}, err)
	if perr := s.nc.PublishMsg(msg); perr != nil && !errors.Is(perr, nats.ErrConnectionClosed) {
		s.log.Debug("credentials.watch answer not sent", "error", perr)
	}
}

// Close stops serving and answers every held watch "no change" (the agents
// watch again, at another instance).
func (s *Service) Close() {
	for _, sub := range s.subs {
		_ = sub.Unsubscribe()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	for host, held := range s.waiting {
		for _, w := range held {
			s.release(w, false)
		}
		delete(s.waiting, host)
	}
}

// Held is how many watches this instance holds (metrics, tests).
func (s *Service) Held() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, held := range s.waiting {
		n += len(held)
	}
	return n
}
