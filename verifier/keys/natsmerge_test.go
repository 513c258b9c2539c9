package keys

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/nats-io/nats-server/v2/server"
)

// includedAccounts is a file that a test's configuration may include (as
// accounts.conf, beside it).
const includedAccounts = "accounts { LEGACY { users: [ {user: a, password: b} ] } }\n"

// mergeFile writes text (%[1]s: a JetStream store directory) as a
// nats-server configuration file, with includedAccounts beside it, and
// merges the tpmauthn layout into it.
func mergeFile(t *testing.T, k *Set, text string) (*Merged, error) {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "nats-server.conf")
	if err := os.WriteFile(filepath.Join(dir, "accounts.conf"), []byte(includedAccounts), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, fmt.Appendf(nil, text, filepath.Join(dir, "js")), 0o600); err != nil {
		t.Fatal(err)
	}
	return MergeServerConfig(k, path, Websocket{})
}

// newKeys is a fresh verifier key set.
func newKeys(t *testing.T) *Set {
	t.Helper()
	k, _, err := LoadOrCreate(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// loadMerged has nats-server's own configuration parser read m.
func loadMerged(t *testing.T, m *Merged) *server.Options {
	t.Helper()
	path := filepath.Join(t.TempDir(), "merged.conf")
	if err := os.WriteFile(path, []byte(m.Config), 0o600); err != nil {
		t.Fatal(err)
	}
	o, err := server.ProcessConfigFile(path)
	if err != nil {
		t.Fatalf("nats-server refuses the merged configuration: %v\n%s", err, m.Config)
	}
	return o
}

// accountOf is the account a configured user (by name or nkey) is in.
func accountOf(o *server.Options, user string) string {
	for _, u := range o.Users {
		if u.Username == user && u.Account != nil {
			return u.Account.Name
		}
	}
	for _, u := range o.Nkeys {
		if u.Nkey == user && u.Account != nil {
			return u.Account.Name
		}
	}
	return ""
}

// TestMergeKeepsAccounts: the file's accounts, their users and its other
// settings survive, next to tpmauthn's accounts, its system user and the
// auth callout; the notes say who now goes through the callout.
func TestMergeKeepsAccounts(t *testing.T) {
	k := newKeys(t)
	tests := []struct {
		name, conf string
		sys        string // the system account the verifier's user lands in
		sysUsers   []string
	}{
		{"no-system-account", `# an existing server
listen: 127.0.0.1:-1
max_payload: 2MB
jetstream {
  store_dir: %q
}
accounts {
  LEGACY: {
    jetstream: enabled
    users: [ {user: alice, password: s3cret} ]
  }
  "OTHER" = { users = [ {user: bob, password: "pw#2"} ] }  # a comment with { and [
}
`, AccountSys, nil},
		{"system-account-with-users", `jetstream: { store_dir: %q }
system_account: ADMIN
accounts: {
  ADMIN { users: [
    {user: ops, password: ops}
  ] }
  LEGACY { users: [ {user: alice, password: s3cret} ] }
}
`, "ADMIN", []string{"ops"}},
		{"system-account-without-users", `jetstream { store_dir: %q }
system_account: ADMIN
accounts { ADMIN {}, LEGACY { users: [ {user: alice, password: s3cret} ] } }
`, "ADMIN", nil},
		{"no-accounts", `jetstream { store_dir: %q }
port: -1`, AccountSys, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m, err := mergeFile(t, k, tc.conf)
			if err != nil {
				t.Fatal(err)
			}
			o := loadMerged(t, m)
			if strings.Contains(tc.conf, "alice") && accountOf(o, "alice") != "LEGACY" {
				t.Errorf("user alice is in account %q, want LEGACY\n%s", accountOf(o, "alice"), m.Config)
			}
			if strings.Contains(tc.conf, "bob") && (accountOf(o, "bob") != "OTHER" || o.MaxPayload != 2<<20) {
				t.Errorf("user bob in %q, max_payload %d: the file's settings changed", accountOf(o, "bob"), o.MaxPayload)
			}
			for _, u := range tc.sysUsers {
				if accountOf(o, u) != tc.sys {
					t.Errorf("user %s left system account %s", u, tc.sys)
				}
			}
			if got := accountOf(o, Public(k.Sys)); got != tc.sys || o.SystemAccount != tc.sys {
				t.Errorf("verifier's system user in %q, system account %q, want %s", got, o.SystemAccount, tc.sys)
			}
			if accountOf(o, Public(k.Verifier)) != AccountAuth || accountOf(o, Public(k.Operator)) != AccountAuth {
				t.Errorf("the verifier's and the operator's users are not in %s", AccountAuth)
			}
			ac := o.AuthCallout
			if ac == nil || ac.Account != AccountAuth || ac.Issuer != Public(k.Issuer) || !slices.Equal(ac.AllowedAccounts, []string{AccountApp}) ||
				o.AuthTimeout != 5 || !o.JetStream {
				t.Fatalf("auth callout %+v, auth timeout %v, jetstream %v\n%s", ac, o.AuthTimeout, o.JetStream, m.Config)
			}
			notes := strings.Join(m.Notes, "\n")
			if !strings.Contains(notes, "every other client") || (strings.Contains(tc.conf, "LEGACY") && !strings.Contains(notes, "kept accounts")) {
				t.Errorf("notes:\n%s", notes)
			}
		})
	}
}

// TestMergeRefuses: what cannot be merged without changing what the file's
// clients get is refused, saying what to do.
func TestMergeRefuses(t *testing.T) {
	k := newKeys(t)
	tests := []struct {
		name, conf string
		want       error
		says       string
	}{
		{"no-jetstream", "# %s\nport: 4222\naccounts { A { users: [ {user: a, password: b} ] } }\n", ErrNoJetStream, "add 'jetstream { store_dir:"},
		{"jetstream-disabled", "jetstream { store_dir: %q, enabled: false }\n", ErrNoJetStream, "server-level JetStream"},
		{"authorization", "jetstream { store_dir: %q }\nauthorization { users: [ {user: a, password: b} ] }\n", ErrMergeConflict, "move them into an account"},
		{"merged-before", "jetstream { store_dir: %q }\naccounts { AUTH {} }\n", ErrMergeConflict, "merged before?"},
		{"operator-mode", "jetstream { store_dir: %q }\noperator: /etc/nats/op.jwt\n", ErrMergeConflict, "operator (JWT) mode"},
		{"included-accounts", "jetstream { store_dir: %q }\ninclude accounts.conf\n", ErrMergeConflict, "an included file"},
		{"sys-not-system", "jetstream { store_dir: %q }\naccounts { SYS {} }\n", ErrMergeConflict, "not the system account"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := mergeFile(t, k, tc.conf)
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.says) {
				t.Fatalf("merge = %v, want %v saying %q", err, tc.want, tc.says)
			}
		})
	}
}
