// Package console is the fleet console the verifier serves to people
// (server-rendered html/template pages, a little JavaScript): the fleet's
// hosts and their status, a host's credentials and live sessions, the
// audit trail live over NATS WebSocket, the alerts, the people and their
// devices.
//
// Who sees what is the operator API's own check (policy.AdminAllows on the
// roles the person's IdP groups grant): a page needs the read operation it
// shows (host.list, person.list, audit.read), an action button the
// operation it calls. The actions themselves are not HTTP endpoints: the
// button opens a NATS connection whose nonce a passkey signs (a ceremony:
// the person re-confirms), and sends the operator API request on it, where
// the gate (verifier/operators) checks the session's roles again and the
// audit names the person and their passkey. A page request can change
// nothing.
package console

import (
	"context"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/audit"
	"github.com/tpmauthn/tpmauthn/verifier/passkey"
	"github.com/tpmauthn/tpmauthn/verifier/policy"
	"github.com/tpmauthn/tpmauthn/verifier/record"
	"github.com/tpmauthn/tpmauthn/verifier/store"
)

// auditReader is the audit stream as the pages read it.
type auditReader interface {
	LastSeq(ctx context.Context) (uint64, error)
	ReadRaw(ctx context.Context, from uint64, max int) ([]audit.RawEvent, error)
}

// Config configures a Handler.
type Config struct {
	Store    *store.Store
	Audit    auditReader
	Policy   func() *policy.Policy
	Passkeys *passkey.Handler // web sessions, page chrome
	// WebsocketURL is the NATS WebSocket URL (for the pages' CSP).
	WebsocketURL string
	Logger       *slog.Logger
	Now          func() time.Time
}

// Handler serves the console.
type Handler struct {
	cfg Config
}

// New returns a Handler.
func New(cfg Config) *Handler {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Handler{cfg: cfg}
}

// Register adds the pages to mux.
func (h *Handler) Register(mux *http.ServeMux) {
	mux.HandleFunc("GET /console/{$}", h.fleet)
	mux.HandleFunc("GET /console/hosts/{id}", h.host)
	mux.HandleFunc("GET /console/people", h.people)
	mux.HandleFunc("GET /console/audit", h.audit)
	mux.HandleFunc("GET /console/alerts", h.alerts)
	mux.HandleFunc("GET /console/console.js", serveJS)
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, "/console/", http.StatusSeeOther) })
}

// ErrNoRole: the person's roles grant no console page.
var ErrNoRole = errors.New("no role of yours may see this page")

// viewer is who asks for a page, with the roles their groups grant.
type viewer struct {
	Person *record.Person
	Roles  []string
	pol    *policy.Policy
}

// Can reports whether the viewer's roles grant op (the operator API's).
func (v *viewer) Can(op string) bool { return v.pol.AdminAllows(v.Roles, op) }

// viewerOf names the request's person and their roles as a passkey
// connect of theirs would have them: the actions are sent on one.
func (h *Handler) viewerOf(r *http.Request, op string) (*viewer, error) {
	s, p, err := h.cfg.Passkeys.Current(r)
	if err != nil {
		return nil, err
	}
	who := policy.Person{IdP: p.IdP, Groups: p.Groups, Assurance: policy.AssuranceSoftware}
	if s.Passkey != "" {
		if c, _, err := store.Get[record.Credential](r.Context(), h.cfg.Store.Credentials, s.Passkey); err == nil {
			who.Assurance, who.Synced = c.Assurance, c.Synced
		}
	}
	pol := h.cfg.Policy()
	v := &viewer{Person: p, Roles: pol.RolesForPerson(who), pol: pol}
	if !v.Can(op) {
		return v, fmt.Errorf("%w: %s (roles %v)", ErrNoRole, op, v.Roles)
	}
	return v, nil
}

// pageLoadTimeout bounds a page's reads of the store.
const pageLoadTimeout = 10 * time.Second

// page renders a console page for the viewer of op.
func (h *Handler) page(w http.ResponseWriter, r *http.Request, op, name, title string, load func(ctx context.Context, v *viewer) (map[string]any, error)) {
	v, err := h.viewerOf(r, op)
	if err == nil {
		var data map[string]any
		// A page waits for the store at most this long, then says the
		// store is unavailable rather than keep the browser waiting.
		ctx, cancel := context.WithTimeout(r.Context(), pageLoadTimeout)
		defer cancel()
		if data, err = load(ctx, v); err == nil {
			data["V"], data["Person"] = v, v.Person
			passkey.RenderWith(w, pages, http.StatusOK, name, h.cfg.Passkeys.PageData(r, title, data), h.cfg.WebsocketURL)
			return
		}
	}
	h.fail(w, r, err)
}

func (h *Handler) fail(w http.ResponseWriter, r *http.Request, err error) {
	if errors.Is(err, passkey.ErrNoSession) {
		http.Redirect(w, r, passkey.PathSignIn+"?next="+r.URL.EscapedPath(), http.StatusSeeOther)
		return
	}
	code, msg := passkey.Status(err)
	if errors.Is(err, ErrNoRole) {
		code, msg = http.StatusForbidden, ErrNoRole.Error()
	}
	h.cfg.Logger.Warn("console page refused", "error", err, "path", r.URL.Path)
	passkey.RenderWith(w, pages, code, "error", h.cfg.Passkeys.PageData(r, "Refused", map[string]any{"Message": msg}), h.cfg.WebsocketURL)
}

// fleet is the overview: counts and every host.
func (h *Handler) fleet(w http.ResponseWriter, r *http.Request) {
	h.page(w, r, "host.list", "fleet", "Fleet", func(ctx context.Context, _ *viewer) (map[string]any, error) {
		hosts, err := store.List[record.Host](ctx, h.cfg.Store.Hosts)
		if err != nil {
			return nil, err
		}
		creds, err := store.List[record.Credential](ctx, h.cfg.Store.Credentials)
		if err != nil {
			return nil, err
		}
		slices.SortFunc(hosts, func(a, b *record.Host) int { return strings.Compare(a.Hostname+a.ID, b.Hostname+b.ID) })
		perHost, status := map[string]int{}, map[string]int{}
		now := h.cfg.Now()
		live := 0
		for _, c := range creds {
			perHost[c.Host]++
			status[string(c.Status)]++
			live += len(liveSessions(c, now))
		}
		hostStatus := map[string]int{}
		for _, x := range hosts {
			hostStatus[string(x.Status)]++
		}
		return map[string]any{"Hosts": hosts, "PerHost": perHost, "HostStatus": hostStatus, "CredStatus": status, "Live": live}, nil
	})
}

// host is one host: its credentials and their live sessions.
func (h *Handler) host(w http.ResponseWriter, r *http.Request) {
	h.page(w, r, "host.show", "host", "Host", func(ctx context.Context, _ *viewer) (map[string]any, error) {
		x, _, err := store.Get[record.Host](ctx, h.cfg.Store.Hosts, r.PathValue("id"))
		if err != nil {
			return nil, err
		}
		all, err := store.List[record.Credential](ctx, h.cfg.Store.Credentials)
		if err != nil {
			return nil, err
		}
		creds := slices.DeleteFunc(all, func(c *record.Credential) bool { return c.Host != x.ID })
		slices.SortFunc(creds, func(a, b *record.Credential) int { return strings.Compare(a.Workload, b.Workload) })
		type session struct {
			Credential, Workload string
			record.SessionRef
		}
		var sessions []session
		for _, c := range creds {
			for _, s := range liveSessions(c, h.cfg.Now()) {
				sessions = append(sessions, session{c.ID, c.Workload, s})
			}
		}
		return map[string]any{"Host": x, "Creds": creds, "Sessions": sessions}, nil
	})
}

// people lists the people and their devices' credentials.
func (h *Handler) people(w http.ResponseWriter, r *http.Request) {
	h.page(w, r, "person.list", "people", "People", func(ctx context.Context, _ *viewer) (map[string]any, error) {
		ps, err := store.List[record.Person](ctx, h.cfg.Store.People)
		if err != nil {
			return nil, err
		}
		slices.SortFunc(ps, func(a, b *record.Person) int { return strings.Compare(a.Name+a.ID, b.Name+b.ID) })
		devices := map[string][]*record.Credential{}
		for _, p := range ps {
			for _, id := range p.Credentials {
				if c, _, err := store.Get[record.Credential](ctx, h.cfg.Store.Credentials, id); err == nil {
					devices[p.ID] = append(devices[p.ID], c)
				}
			}
		}
		return map[string]any{"People": ps, "Devices": devices}, nil
	})
}

// event is an audit event as the pages show it.
type event struct {
	audit.Event
	Msg uint64
}

// tail reads the last events of the audit stream (at most n messages back).
func (h *Handler) tail(ctx context.Context, n uint64) ([]event, uint64, error) {
	last, err := h.cfg.Audit.LastSeq(ctx)
	if err != nil {
		return nil, 0, err
	}
	from := uint64(1)
	if last > n {
		from = last - n + 1
	}
	raw, err := h.cfg.Audit.ReadRaw(ctx, from, 2000)
	if err != nil {
		return nil, 0, err
	}
	var out []event
	for _, e := range raw {
		var ev audit.Event
		if e.Missing || json.Unmarshal(e.Data, &ev) != nil {
			continue
		}
		out = append(out, event{ev, e.Msg})
	}
	slices.Reverse(out)
	return out, last, nil
}

// audit is the trail's tail, which the page's script keeps live over NATS.
func (h *Handler) audit(w http.ResponseWriter, r *http.Request) {
	h.page(w, r, "audit.read", "audit", "Audit", func(ctx context.Context, _ *viewer) (map[string]any, error) {
		evs, last, err := h.tail(ctx, 50)
		if len(evs) > 100 {
			evs = evs[:100]
		}
		return map[string]any{"Events": evs, "Next": last + 1}, err
	})
}

// alerts are the trail's recent alert events.
func (h *Handler) alerts(w http.ResponseWriter, r *http.Request) {
	h.page(w, r, "audit.read", "alerts", "Alerts", func(ctx context.Context, _ *viewer) (map[string]any, error) {
		evs, _, err := h.tail(ctx, 1000)
		evs = slices.DeleteFunc(evs, func(e event) bool { return !strings.HasPrefix(e.Kind, "alert.") })
		return map[string]any{"Events": evs}, err
	})
}

// liveSessions are a credential's sessions whose JWT has not expired (a
// kicked or closed one stays listed until its record is next written).
func liveSessions(c *record.Credential, now time.Time) []record.SessionRef {
	if c.Status != api.CredentialActive {
		return nil
	}
	var out []record.SessionRef
	for _, s := range c.Sessions {
		if s.Expires.After(now) {
			out = append(out, s)
		}
	}
	return out
}

//go:embed assets
var assets embed.FS

func serveJS(w http.ResponseWriter, _ *http.Request) {
	b, _ := assets.ReadFile("assets/console.js")
	w.Header().Set("Content-Type", "text/javascript; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("Cache-Control", "no-cache")
	_, _ = w.Write(b)
}
