package console

import (
	"html/template"
	"strings"

	"github.com/tpmauthn/tpmauthn/verifier/passkey"
)

type action struct{ Op, ID, Label string }

// Actions are buttons: console.js sends the operator API request on a
// connection a passkey ceremony signs; data-op and data-id are all it
// takes from the page.
var pages = template.Must(template.New("").Funcs(passkey.Funcs).Funcs(template.FuncMap{
	"short": func(s string) string {
		if len(s) > 12 {
			return s[:12] + "…"
		}
		return s
	},
	"join": strings.Join,
	"dict": func(op, id, label string) action { return action{op, id, label} },
}).Parse(passkey.Chrome + `
{{define "act"}}<button class="act" data-op="{{.Op}}" data-id="{{.ID}}">{{.Label}}</button>{{end}}
{{define "fleet"}}{{template "head" .}}{{template "nav" .}}<main>
<h1>Fleet</h1>
<div class="cards"><div class="card"><b id="hosts-active">{{index .HostStatus "active"}}</b>hosts active</div>
<div class="card"><b>{{index .HostStatus "pending"}}</b>pending approval</div>
<div class="card"><b>{{index .CredStatus "active"}}</b>credentials active</div>
<div class="card"><b>{{index .CredStatus "quarantined"}}</b>quarantined</div>
<div class="card"><b>{{.Live}}</b>live sessions</div></div>
<table id="hosts"><thead><tr><th>Host</th><th>ID</th><th>Status</th><th>Roles</th><th>TPM</th><th>Credentials</th><th>Enrolled</th><th></th></tr></thead><tbody>
{{range .Hosts}}<tr data-host="{{.ID}}"><td><a href="/console/hosts/{{.ID}}">{{.Hostname}}</a></td><td><code>{{short .ID}}</code></td>
<td class="{{.Status}}">{{.Status}}{{if .Reason}} ({{.Reason}}){{end}}</td><td>{{join .Roles ", "}}</td><td>{{.TPM.Manufacturer}}</td>
<td>{{index $.PerHost .ID}}</td><td>{{when .Created}}</td>
<td>{{if and (eq .Status "pending") ($.V.Can "host.approve")}}{{template "act" (dict "host.approve" .ID "Approve")}}{{end}}
{{if and (ne .Status "revoked") ($.V.Can "host.revoke")}}{{template "act" (dict "host.revoke" .ID "Revoke")}}{{end}}</td></tr>
{{else}}<tr><td colspan="8">No host enrolled yet.</td></tr>{{end}}</tbody></table>
<p id="status" role="status"></p><script type="module" src="/console/console.js"></script></main></body></html>{{end}}
{{define "host"}}{{template "head" .}}{{template "nav" .}}<main>
<h1>{{.Host.Hostname}}</h1>
<p>Host <code>{{.Host.ID}}</code>, <span class="{{.Host.Status}}">{{.Host.Status}}</span>, roles {{join .Host.Roles ", "}}, enrolled {{when .Host.Created}} via {{.Host.Via}}.</p>
<h2>Credentials</h2>
<table id="credentials"><thead><tr><th>Workload</th><th>Credential</th><th>Status</th><th>Counter</th><th>Registered</th><th>Last used</th><th></th></tr></thead><tbody>
{{range .Creds}}<tr data-credential="{{.ID}}"><td>{{.Workload}}{{if .LocalUser}} ({{.LocalUser}}){{end}}</td><td><code>{{short .ID}}</code></td>
<td class="{{.Status}}">{{.Status}}{{if .Reason}} ({{.Reason}}){{end}}</td><td>{{.Counter}}</td><td>{{when .Created}}</td><td>{{when .Updated}}</td>
<td>{{if and (eq .Status "active") ($.V.Can "credential.revoke")}}{{template "act" (dict "credential.revoke" .ID "Revoke")}}{{end}}
{{if and (eq .Status "quarantined") ($.V.Can "credential.release")}}{{template "act" (dict "credential.release" .ID "Release")}}{{end}}</td></tr>
{{else}}<tr><td colspan="7">No credential.</td></tr>{{end}}</tbody></table>
<h2>Live sessions</h2>
<table id="sessions"><thead><tr><th>Workload</th><th>Server</th><th>Client</th><th>Until</th></tr></thead><tbody>
{{range .Sessions}}<tr><td>{{.Workload}}</td><td><code>{{short .Server}}</code></td><td>{{.Client}}</td><td>{{when .Expires}}</td></tr>
{{else}}<tr><td colspan="4">None.</td></tr>{{end}}</tbody></table>
<p id="status" role="status"></p><script type="module" src="/console/console.js"></script></main></body></html>{{end}}
{{define "people"}}{{template "head" .}}{{template "nav" .}}<main>
<h1>People</h1>
<table id="people"><thead><tr><th>Person</th><th>IdP</th><th>Groups</th><th>Status</th><th>Last login</th><th>Devices</th><th></th></tr></thead><tbody>
{{range .People}}<tr data-person="{{.ID}}"><td>{{.Name}}{{if .Email}} &lt;{{.Email}}&gt;{{end}}</td><td>{{.IdP}}</td><td>{{join .Groups ", "}}</td>
<td>{{if .Disabled.IsZero}}<span class="active">active</span>{{else}}<span class="revoked">disabled</span> ({{.DisabledReason}}){{end}}</td><td>{{when .LastLogin}}</td>
<td><ul>{{range index $.Devices .ID}}<li class="{{.Status}}">{{kind .}}{{if .Host}} on <a href="/console/hosts/{{.Host}}">{{short .Host}}</a>{{end}}{{if .Label}}: {{.Label}}{{end}} — {{.Status}}</li>{{else}}<li>none</li>{{end}}</ul></td>
<td>{{if and .Disabled.IsZero ($.V.Can "person.disable")}}{{template "act" (dict "person.disable" .ID "Disable")}}{{end}}</td></tr>
{{else}}<tr><td colspan="7">Nobody has logged in yet.</td></tr>{{end}}</tbody></table>
<p id="status" role="status"></p><script type="module" src="/console/console.js"></script></main></body></html>{{end}}
{{define "events"}}<table id="audit" data-next="{{.Next}}"><thead><tr><th>#</th><th>Time</th><th>Kind</th><th>Result</th><th>Who</th><th>Reason</th></tr></thead><tbody>
{{range .Events}}<tr><td>{{.Seq}}</td><td>{{when .Time}}</td><td>{{.Kind}}</td><td class="{{.Result}}">{{.Result}}</td>
<td>{{if .Person}}{{short .Person}} {{end}}{{.Workload}}{{if .Host}}@{{short .Host}}{{end}}{{if .Actor}} by {{.Actor}}{{end}}</td><td>{{.Reason}}</td></tr>{{end}}</tbody></table>{{end}}
{{define "audit"}}{{template "head" .}}{{template "nav" .}}<main>
<h1>Audit trail</h1><p>Live: new events appear as the verifier records them (read over NATS WebSocket with your session key). <span id="live"></span></p>
{{template "events" .}}
<p id="status" role="status"></p><script type="module" src="/console/console.js"></script></main></body></html>{{end}}
{{define "alerts"}}{{template "head" .}}{{template "nav" .}}<main>
<h1>Alerts</h1>{{template "events" .}}</main></body></html>{{end}}
`))
