package keys

import (
	"fmt"
	"strings"

	"github.com/tpmauthn/tpmauthn/api"
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
}

// ServerConfig returns the nats-server configuration for the tpmauthn layout.
// The embedded server runs exactly this text, and tpmauthnctl nats-config
// prints it for an existing cluster.
func ServerConfig(k *Set, o ServerConfigOptions) string {
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	w("# tpmauthn: accounts and auth callout (nats-server >= 2.15.3)\n")
	if o.Listen != "" {
		w("listen: %q\n", o.Listen)
	}
	if o.StoreDir != "" {
		w("jetstream { store_dir: %q }\n", o.StoreDir)
	}
	if o.Extra != "" {
		w("%s\n", o.Extra)
	}
	w(`accounts {
  %[1]s {
    jetstream: enabled
    users: [
      { nkey: %[4]s }  # the verifier
      { nkey: %[5]s, permissions: { publish: ["%[7]s>"], subscribe: ["_INBOX.>", "tpmauthn.alerts.>"] } }  # tpmauthnctl
    ]
    exports: [ { service: "tpmauthn.v1.>" } ]
  }
  %[2]s {
    imports: [ { service: { account: %[1]s, subject: "tpmauthn.v1.>" }, share: true } ]
  }
  %[3]s {
    users: [ { nkey: %[6]s } ]  # the verifier's system user: kicks revoked connections
  }
}
system_account: %[3]s
authorization {
  timeout: 5
  auth_callout {
    issuer: %[8]s
    account: %[1]s
    auth_users: [ %[4]s, %[5]s ]
    xkey: %[9]s
    allowed_accounts: [ %[2]s ]
  }
}
`, AccountAuth, AccountApp, AccountSys, Public(k.Verifier), Public(k.Operator), Public(k.Sys),
		api.SubjectAdminPrefix, Public(k.Issuer), Public(k.XKey))
	return b.String()
}
