package keys

import (
	"cmp"
	"fmt"
	"strings"

	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/audit"
)

// Account names of the NATS layout.
const (
	AccountAuth = "AUTH"
	AccountApp  = "APP"
	AccountSys  = "SYS"
)

// ServerConfigOptions chooses the parts of the server block that differ
// between the embedded server and an existing cluster.
type ServerConfigOptions struct {
	Listen   string // host:port; empty leaves it out
	StoreDir string // JetStream store; empty leaves the jetstream block out
	// Extra is appended verbatim (server_name, cluster, tls, ...).
	Extra string
	// Websocket, with Listen set, adds the listener browsers connect to.
	Websocket Websocket
}

// DefaultWebsocketAuthTimeout is the WebSocket listener's time from the
// connection to a decided CONNECT: long enough for a person to answer a
// passkey prompt (TCP keeps authorization.timeout, 5 s).
const DefaultWebsocketAuthTimeout = 60

// Websocket is nats-server's websocket block for browsers. Its clients go
// through the auth callout like every other client: the block sets no
// user, token or no_auth_user, which would bypass it.
type Websocket struct {
	Listen string // host:port
	// AllowedOrigins are the pages that may connect (the Origin header):
	// the verifier's public URL's origin.
	AllowedOrigins []string
	// AuthTimeout is in seconds (DefaultWebsocketAuthTimeout when zero).
	AuthTimeout int
	// CertFile and KeyFile are the listener's TLS certificate and key;
	// without them it serves plain ws (for loopback only: the caller
	// checks).
	CertFile, KeyFile string
}

func (w Websocket) block() string {
	var b strings.Builder
	fmt.Fprintf(&b, "websocket {\n  listen: %q\n", w.Listen)
	if w.CertFile != "" {
		fmt.Fprintf(&b, "  tls { cert_file: %q, key_file: %q }\n", w.CertFile, w.KeyFile)
	} else {
		b.WriteString("  no_tls: true\n")
	}
	if len(w.AllowedOrigins) > 0 {
		fmt.Fprintf(&b, "  allowed_origins: [%s]\n", quoted(w.AllowedOrigins))
	}
	fmt.Fprintf(&b, "  # a person's passkey prompt fits in it; no user, token or no_auth_user: the auth callout decides\n")
	fmt.Fprintf(&b, "  authorization { timeout: %d }\n}\n", cmp.Or(w.AuthTimeout, DefaultWebsocketAuthTimeout))
	return b.String()
}

// AuditStreamDenied are the JetStream API subjects that would destroy or
// shrink the audit stream: deleting it, purging it, deleting a message,
// changing its configuration (lower limits drop the oldest events at once; a
// new max age expires them), restoring a snapshot over it, removing a
// replica's peer. Every credential the product hands out is denied them
// (threat model M3): the verifier's own user, which creates the stream on
// first start and then only appends to it and reads it, and the system user,
// through $JS.API.ACCOUNT.PURGE (which deletes every stream of an account and
// is answered for the system account only). The operator user may publish to
// the operator API only, so it reaches none of them either.
//
// nats-server checks publish permissions before the JetStream API sees a
// request, so the refusal does not depend on the stream's own deny_delete
// and deny_purge (which the writer sets too, and which an update cannot
// clear). Changing the stream's limits therefore takes an administrator's
// credential outside the product: see auditlog.Config.
func AuditStreamDenied() []string {
	var subjects []string
	for _, op := range []string{"DELETE", "PURGE", "UPDATE", "MSG.DELETE", "RESTORE", "PEER.REMOVE"} {
		subjects = append(subjects, "$JS.API.STREAM."+op+"."+audit.StreamName)
	}
	return append(subjects, "$JS.API.ACCOUNT.PURGE.>")
}

// quoted is subjects as a conf-file list.
func quoted(subjects []string) string {
	q := make([]string, len(subjects))
	for i, s := range subjects {
		q[i] = fmt.Sprintf("%q", s)
	}
	return strings.Join(q, ", ")
}

// ServerConfig returns the nats-server configuration for the tpmauthn layout.
// The embedded server runs exactly this text, and tpmauthnctl nats-config
// prints it for an existing cluster (MergeServerConfig adds it to an
// existing configuration file).
func ServerConfig(k *Set, o ServerConfigOptions) string {
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	w("%s", configHeader)
	if o.Listen != "" {
		w("listen: %q\n", o.Listen)
	}
	if o.StoreDir != "" {
		w("jetstream { store_dir: %q }\n", o.StoreDir)
	}
	if o.Extra != "" {
		w("%s\n", o.Extra)
	}
	if o.Websocket.Listen != "" {
		w("%s", o.Websocket.block())
	}
	w("accounts {\n%s%s}\n", productAccounts(k), sysAccount(AccountSys, k))
	w("system_account: %s\n", AccountSys)
	w("%s", authorizationBlock(k))
	return b.String()
}

// configHeader opens the tpmauthn part of a server configuration.
const configHeader = "# tpmauthn: accounts and auth callout (nats-server >= 2.15.3, server-level JetStream)\n"

// productAccounts are the accounts entries of AUTH (the verifier and
// tpmauthnctl, and their JetStream) and APP (every session the callout
// grants).
func productAccounts(k *Set) string {
	return fmt.Sprintf(`  %[1]s {
    jetstream: enabled
    users: [
      { nkey: %[3]s, permissions: { publish: { deny: [%[6]s] } } }  # the verifier: may not destroy the audit trail
      { nkey: %[4]s, permissions: { publish: { allow: ["%[5]s>"], deny: ["%[5]sp.>"] }, subscribe: ["_INBOX.>", "tpmauthn.alerts.>"] } }  # tpmauthnctl: never as a person
    ]
    exports: [ { service: "tpmauthn.v1.>" }, { service: "%[5]sp.>" } ]
  }
  %[2]s {
    # the operator API for people: %[5]sp.PERSON.CREDENTIAL.OP, which
    # each person's session may publish to for its own person and
    # credential only (%[5]sOP itself stays in this account: the operator key).
    # No share: the v1 API's subject names its caller (api.Scope); nothing
    # reads the Nats-Request-Info header, which the server would write.
    imports: [
      { service: { account: %[1]s, subject: "tpmauthn.v1.>" } }
      { service: { account: %[1]s, subject: "%[5]sp.>" } }
    ]
  }
`, AccountAuth, AccountApp, Public(k.Verifier), Public(k.Operator), api.SubjectAdminPrefix, quoted(AuditStreamDenied()))
}

// sysUser is the verifier's user in the system account: it kicks revoked
// connections; no JetStream API (from the system account,
// $JS.API.ACCOUNT.PURGE deletes an account's streams).
func sysUser(k *Set) string {
	return fmt.Sprintf(`{ nkey: %s, permissions: { publish: { deny: ["$JS.API.>"] } } }  # tpmauthn-verifier: kicks revoked connections`, Public(k.Sys))
}

// sysAccount is a system account entry named name holding sysUser.
func sysAccount(name string, k *Set) string {
	return fmt.Sprintf("  %q {\n    users: [\n      %s\n    ]\n  }\n", name, sysUser(k))
}

// authorizationBlock sends every client to the auth callout but the
// product's own users (auth_users) and the users of accounts outside
// allowed_accounts.
func authorizationBlock(k *Set) string {
	return fmt.Sprintf(`# Every client but the users of accounts other than %[2]s (so an
# anonymous client, or a user of the global account) goes through the auth
# callout, which tpmauthn-verifier answers: it lets in tpmauthn's hosts,
# workloads and people (into account %[2]s) and refuses everyone else.
authorization {
  timeout: 5
  auth_callout {
    issuer: %[3]s
    account: %[1]s
    auth_users: [ %[4]s, %[5]s ]
    xkey: %[6]s
    allowed_accounts: [ %[2]s ]
  }
}
`, AccountAuth, AccountApp, Public(k.Issuer), Public(k.Verifier), Public(k.Operator), Public(k.XKey))
}
