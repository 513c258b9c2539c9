package peers

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/tpmauthn/tpmauthn/audit"
)

// Fields is the level of record fields this version keeps: 2 adds the
// regroup's fence (Person.GroupsGen, FencedGen, FencedGroups;
// Credential.GroupsGen). An instance without a level is taken for 1.
const Fields = 2

// AlertOlderVerifier is the alert of an episode with older instances.
const AlertOlderVerifier = "older_verifier"

// base is the name of a verifier's main NATS connection, before the tag.
const base = "tpmauthn-verifier"

// Name is the name this version gives its main NATS connection.
func Name() string { return base + " fields=" + strconv.Itoa(Fields) }

// Level reads the fields level from a connection's name: ok is false for a
// connection that is not a verifier's main one (its setup or system
// connection, tpmauthnctl, anything else).
func Level(name string) (level int, ok bool) {
	if name == base {
		return 1, true // before the tag
	}
	rest, found := strings.CutPrefix(name, base+" fields=")
	if !found {
		return 0, false
	}
	if i := strings.IndexByte(rest, ' '); i >= 0 {
		rest = rest[:i] // later versions may add more tags
	}
	n, err := strconv.Atoi(rest)
	if err != nil || n < 1 {
		return 1, true // a verifier's, unreadable: the oldest, fail closed
	}
	return n, true
}

// Conn is one client connection a server reports.
type Conn struct {
	Server string
	CID    uint64
	Name   string
	Addr   string
}

func (c Conn) String() string {
	return fmt.Sprintf("%q from %s (server %s, client %d)", c.Name, c.Addr, c.Server, c.CID)
}

// Lister lists the connections of the callout account on every server
// (sessions.Sessions.AccountConns).
type Lister interface {
	AccountConns(ctx context.Context) ([]Conn, error)
}

type alerter interface {
	Alert(kind string, e audit.Event)
}

type gauge interface {
	OlderVerifiers(n int)
}

// Config configures a Watcher.
type Config struct {
	Conns   Lister
	Alerts  alerter
	Metrics gauge // may be nil
	Logger  *slog.Logger
	// Every is how often the servers are asked (a minute if 0).
	Every time.Duration
}

// Watcher raises an episode while an older verifier instance is connected.
type Watcher struct {
	cfg  Config
	mu   sync.Mutex
	open bool // an episode is open
	stop context.CancelFunc
	done chan struct{}
}

// New returns a Watcher; Start runs it.
func New(cfg Config) *Watcher {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Every <= 0 {
		cfg.Every = time.Minute
	}
	return &Watcher{cfg: cfg}
}

// Older returns the connections of verifiers with fewer fields than this
// one.
func Older(conns []Conn) []Conn {
	var out []Conn
	for _, c := range conns {
		if l, ok := Level(c.Name); ok && l < Fields {
			out = append(out, c)
		}
	}
	return out
}

// Check asks the servers once and opens or closes the episode. It returns
// the older instances' connections.
func (w *Watcher) Check(ctx context.Context) ([]Conn, error) {
	conns, err := w.cfg.Conns.AccountConns(ctx)
	if err != nil {
		return nil, err // nothing learned: the episode stays as it was
	}
	older := Older(conns)
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.cfg.Metrics != nil {
		w.cfg.Metrics.OlderVerifiers(len(older))
	}
	switch {
	case len(older) > 0 && !w.open:
		w.open = true
		names := make([]string, 0, len(older))
		for _, c := range older {
			names = append(names, c.String())
		}
		reason := fmt.Sprintf("%d verifier instance(s) of an older version are connected; they drop record fields this version relies on (the regroup's fence): upgrade them: %s",
			len(older), strings.Join(names, "; "))
		w.cfg.Logger.Warn("an older verifier instance is connected: upgrade it", "instances", len(older), "first", older[0].String())
		w.cfg.Alerts.Alert(AlertOlderVerifier, audit.Event{Reason: reason, Server: older[0].Server})
	case len(older) == 0 && w.open:
		w.open = false
		w.cfg.Logger.Info("no older verifier instance is connected any more")
	}
	return older, nil
}

// Start checks now and then every cfg.Every, until Close.
func (w *Watcher) Start() {
	ctx, stop := context.WithCancel(context.Background())
	w.stop, w.done = stop, make(chan struct{})
	go func() {
		defer close(w.done)
		t := time.NewTimer(0)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			if _, err := w.Check(cctx); err != nil && ctx.Err() == nil {
				w.cfg.Logger.Debug("cannot list the verifier instances; trying again later", "error", err)
			}
			cancel()
			t.Reset(w.cfg.Every)
		}
	}()
}

// Close stops a started Watcher.
func (w *Watcher) Close() {
	if w.stop != nil {
		w.stop()
		<-w.done
	}
}
