package passkey

import (
	"bytes"
	"embed"
	"html/template"
	"net/http"
	"net/url"
	"path"
	"strings"
	"time"

	"github.com/tpmauthn/tpmauthn/verifier/record"
)

//go:embed assets
var assets embed.FS

// Chrome is the pages' common markup (html/template: what people, IdPs and
// hosts named is escaped, never markup): "head" takes a map with Title and
// WS (the NATS WebSocket URL, for the page's data attributes), "nav" the
// signed-in person (Person) and the sign-out form's token (CSRF).
const Chrome = `
{{define "head"}}<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{{.Title}} · tpmauthn</title>
<meta name="viewport" content="width=device-width"><link rel="stylesheet" href="/assets/style.css"></head>
<body data-ws="{{.WS}}" data-rpid="{{.RPID}}">{{end}}
{{define "nav"}}<header><b>tpmauthn</b> <a href="/console/">Fleet</a> <a href="/console/people">People</a> <a href="/console/audit">Audit</a> <a href="/console/alerts">Alerts</a> <a href="/passkeys">My passkeys</a>
<span class="me">{{if .Person}}{{.Person.Name}} ({{.Person.IdP}}){{end}}
<form method="post" action="/signout" class="inline"><input type="hidden" name="csrf" value="{{.CSRF}}"><button>Sign out</button></form></span></header>{{end}}
{{define "error"}}{{template "head" .}}<main><h1>Refused</h1><p>{{.Message}}.</p><p><a href="/signin">Sign in</a></p></main></body></html>{{end}}
`

var pages = template.Must(template.New("").Funcs(Funcs).Parse(Chrome + `
{{define "passkeys"}}{{template "head" .}}{{template "nav" .}}<main>
<h1>My passkeys</h1>
<p>Signed in as <b>{{.Person.Name}}</b>{{if .Person.Email}} ({{.Person.Email}}){{end}} at {{.Person.IdP}}{{if .Session.Passkey}}, with a passkey{{end}}.</p>
<table id="passkeys"><thead><tr><th>Device</th><th>Kind</th><th>Registered</th><th>Last used</th><th></th></tr></thead><tbody>
{{range .Keys}}<tr data-id="{{.ID}}"><td>{{.Label}}</td><td>{{kind .}}</td><td>{{when .Created}}</td><td>{{when .Updated}}</td>
<td>{{if eq .Kind "passkey"}}<form method="post" action="/passkeys/remove"><input type="hidden" name="csrf" value="{{$.CSRF}}"><input type="hidden" name="id" value="{{.ID}}"><button class="remove">Remove</button></form>{{end}}</td></tr>
{{else}}<tr><td colspan="5">No passkey yet.</td></tr>{{end}}</tbody></table>
<h2>Add a passkey</h2>
<p><label>Name of this device <input id="label" maxlength="40" placeholder="work laptop"></label> <button id="register">Create a passkey</button></p>
<p id="status" role="status"></p>
<script type="module" src="/assets/passkeys.js"></script></main></body></html>{{end}}
{{define "signin"}}{{template "head" .}}<main><h1>Sign in</h1>
<p><button id="signin" data-next="{{.Next}}">Sign in with a passkey</button></p>
<p>No passkey on this device yet? <a href="/login/">Log in with your identity provider</a>, then create one.</p>
<p id="status" role="status"></p>
<script type="module" src="/assets/passkeys.js"></script></main></body></html>{{end}}
`))

// Funcs are the pages' template functions.
var Funcs = template.FuncMap{
	"when": func(t time.Time) string {
		if t.IsZero() {
			return "never"
		}
		return t.UTC().Format("2006-01-02 15:04 UTC")
	},
	"kind": func(c *record.Credential) string {
		switch {
		case c.Kind == record.KindSessionKey:
			return "session key (until " + c.Expires.UTC().Format("15:04 UTC") + ")"
		case c.Synced:
			return "synced passkey"
		case c.Kind == record.KindPasskey:
			return "device-bound passkey"
		}
		return "TPM credential"
	},
}

// page lists the signed-in person's passkeys and session keys.
func (h *Handler) page(w http.ResponseWriter, r *http.Request) {
	s, p, err := h.Current(r)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	keys, err := h.passkeysOf(r.Context(), p)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	h.Render(w, http.StatusOK, "passkeys", h.PageData(r, "My passkeys", map[string]any{"Person": p, "Session": s, "Keys": keys}))
}

func (h *Handler) signInPage(w http.ResponseWriter, r *http.Request) {
	next := localPath(r.URL.Query().Get("next"), PathPasskeys)
	h.Render(w, http.StatusOK, "signin", h.PageData(r, "Sign in", map[string]any{"Next": next}))
}

// PageData adds what the chrome needs to data: the title, the NATS
// WebSocket URL, the RP ID and the session's form token.
func (h *Handler) PageData(r *http.Request, title string, data map[string]any) map[string]any {
	data["Title"], data["WS"], data["RPID"], data["CSRF"] = title, h.cfg.WebsocketURL, h.rpID, h.FormToken(r)
	return data
}

// Render writes a page of this package's templates.
func (h *Handler) Render(w http.ResponseWriter, code int, name string, data any) {
	RenderWith(w, pages, code, name, data, h.cfg.WebsocketURL)
}

// RenderWith writes a page of t, whole or (if it fails to render) a 500,
// with the security headers (SecurityHeaders).
func RenderWith(w http.ResponseWriter, t *template.Template, code int, name string, data any, ws string) {
	var b bytes.Buffer
	if err := t.ExecuteTemplate(&b, name, data); err != nil {
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	SecurityHeaders(w, ws)
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(code)
	_, _ = w.Write(b.Bytes())
}

// SecurityHeaders are every page's: scripts and styles from this origin
// only (no inline script), connections to it and the NATS WebSocket
// listener ws, no framing, no referrer beyond this origin, nothing cached.
func SecurityHeaders(w http.ResponseWriter, ws string) {
	connect := "'self'"
	if u, err := url.Parse(ws); err == nil && u.Host != "" {
		connect += " " + u.Scheme + "://" + u.Host
	}
	hd := w.Header()
	hd.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src "+connect+
		"; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
	hd.Set("X-Frame-Options", "DENY")
	hd.Set("X-Content-Type-Options", "nosniff")
	// same-origin, not no-referrer: with no-referrer a form POST carries
	// "Origin: null", which the CSRF check refuses.
	hd.Set("Referrer-Policy", "same-origin")
	hd.Set("Cross-Origin-Opener-Policy", "same-origin")
	hd.Set("Cache-Control", "no-store")
}

// serveAsset serves the browser client and the pages' scripts and style.
func serveAsset(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	b, err := assets.ReadFile("assets/" + name)
	if err != nil || strings.Contains(name, "/") {
		http.NotFound(w, r)
		return
	}
	switch path.Ext(name) {
	case ".js":
		w.Header().Set("Content-Type", "text/javascript; charset=utf-8")
	case ".css":
		w.Header().Set("Content-Type", "text/css; charset=utf-8")
	default:
		http.NotFound(w, r)
		return
	}
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("Cache-Control", "no-cache")
	_, _ = w.Write(b)
}

// clientConfig tells the signed-in browser client where and as what to
// connect: the WebSocket URL, the RP ID, the person, their passkeys.
func (h *Handler) clientConfig(w http.ResponseWriter, r *http.Request) {
	s, p, err := h.Current(r)
	if err != nil {
		h.failJSON(w, r, err)
		return
	}
	keys, err := h.passkeysOf(r.Context(), p)
	if err != nil {
		h.failJSON(w, r, err)
		return
	}
	var passkeys []string
	for _, c := range keys {
		if c.Kind == record.KindPasskey {
			passkeys = append(passkeys, c.ID)
		}
	}
	writeJSON(w, map[string]any{"ws": h.cfg.WebsocketURL, "rpId": h.rpID, "person": p.ID,
		"passkeys": passkeys, "sessionExpires": time.Unix(s.Expires, 0).UTC()})
}
