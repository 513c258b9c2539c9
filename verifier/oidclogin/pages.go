package oidclogin

import (
	"bytes"
	"html/template"
	"net/http"
)

// The pages are html/template: names, emails and errors an IdP or a
// request chose are escaped, never markup.
var pages = template.Must(template.New("").Parse(`
{{define "head"}}<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>tpmauthn</title>
<meta name="viewport" content="width=device-width"><style>body{font-family:sans-serif;max-width:36em;margin:3em auto}</style></head><body>{{end}}
{{define "chooser"}}{{template "head"}}<h1>Log in</h1>
{{range .Links}}<p><a href="{{.Href}}">Log in with {{.Name}}</a></p>{{else}}<p>No identity provider is configured.</p>{{end}}
</body></html>{{end}}
{{define "confirm"}}{{template "head"}}<h1>Log in a program</h1>
<p>A program on this computer (listening on port {{.Port}}) asks to log in as you with {{.IdP}}, for <b>{{.Where}}</b>.
<b>Continue only if you just ran <code>tpmauthnctl login</code> yourself, as that user, and it named the same place</b>: the program gets your login.</p>
<form method="post"><input type="hidden" name="csrf" value="{{.CSRF}}"><input type="hidden" name="cb" value="{{.CB}}">
<input type="hidden" name="cc" value="{{.CC}}">{{range $k, $v := .Bind}}<input type="hidden" name="{{$k}}" value="{{$v}}">{{end}}<button>Continue with {{.IdP}}</button></form></body></html>{{end}}
{{define "loggedIn"}}{{template "head"}}<h1>Logged in</h1>
<p>You are logged in as <b>{{.Person.Name}}</b> {{if .Person.Email}}({{.Person.Email}}){{end}} at {{.Person.IdP}}.</p>
<p>Your person ID is <code>{{.Person.ID}}</code>.</p></body></html>{{end}}
{{define "device"}}{{template "head"}}<h1>Log in a device</h1>
<p>Enter the code your device shows. <b>Only continue if you started this login yourself</b>:
whoever gave you a code gets your login.</p>
<form method="post" action="/device"><input type="hidden" name="csrf" value="{{.CSRF}}">
<p><label>Code <input name="user_code" autocomplete="off" autofocus></label></p>
<p><button>Next</button></p></form></body></html>{{end}}
{{define "deviceConfirm"}}{{template "head"}}<h1>Log in a device</h1>
<p>The code {{.UserCode}} was asked for by a device at <b>{{.Addr}}</b>, {{.Age}}, for <b>{{.Where}}</b> (as the device says).
<b>Continue only if that is your device, you started this login yourself, and it named the same place</b>: whoever holds it gets your login.</p>
<form method="post" action="/device"><input type="hidden" name="csrf" value="{{.CSRF}}"><input type="hidden" name="user_code" value="{{.UserCode}}">
{{range .IdPs}}<p><button name="idp" value="{{.}}">Log in with {{.}}</button></p>{{else}}<p>No identity provider is configured.</p>{{end}}
</form></body></html>{{end}}
{{define "deviceApproved"}}{{template "head"}}<h1>Device logged in</h1>
<p>The device is logged in as <b>{{.Person.Name}}</b> at {{.Person.IdP}}. You can close this page and return to it.</p></body></html>{{end}}
{{define "error"}}{{template "head"}}<h1>Login failed</h1><p>{{.Message}}.</p>
<p><a href="/login/">Start again</a></p></body></html>{{end}}
`))

// Page names.
const (
	pageChooser        = "chooser"
	pageConfirm        = "confirm"
	pageLoggedIn       = "loggedIn"
	pageDevice         = "device"
	pageDeviceConfirm  = "deviceConfirm"
	pageDeviceApproved = "deviceApproved"
	pageError          = "error"
)

// render writes a page, whole or (if it fails to render) a 500.
func render(w http.ResponseWriter, code int, page string, data any) {
	var b bytes.Buffer
	if err := pages.ExecuteTemplate(&b, page, data); err != nil {
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_, _ = w.Write(b.Bytes())
}
