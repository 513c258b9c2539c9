package archtest

import (
	"errors"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

const module = "github.com/tpmauthn/tpmauthn/"

// deps lists pkg's dependencies: the packages outside the standard library.
func deps(t *testing.T, pkg string) []string {
	t.Helper()
	out, err := exec.Command("go", "list", "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}", module+pkg).Output()
	if err != nil {
		t.Fatalf("go list -deps %s: %v", pkg, err)
	}
	var ds []string
	for _, d := range strings.Fields(string(out)) {
		if d != module+pkg {
			ds = append(ds, d)
		}
	}
	return ds
}

func TestImportRules(t *testing.T) {
	if testing.Short() {
		t.Skip("runs go list (skipped under -short)")
	}
	for _, tc := range []struct {
		pkg   string
		allow []string // dependency prefixes allowed; nil: check deny only
		deny  []string
		// except are packages under a denied prefix that are allowed all
		// the same.
		except []string
	}{
		// The wire types: what every client imports.
		{pkg: "api", allow: []string{}},
		{pkg: "verifier/record", allow: []string{module + "api"}},
		{pkg: "audit", allow: []string{"github.com/nats-io/nkeys", "golang.org/x/crypto", "golang.org/x/sys"}},
		// The operator tool links no server, metrics or WebAuthn code: of
		// nats-server, only its configuration parser (stdlib only), with
		// which nats-config --merge reads a server's file.
		{pkg: "cmd/tpmauthnctl", deny: []string{"github.com/nats-io/nats-server", "github.com/prometheus",
			"github.com/go-webauthn", "github.com/google/go-attestation", "github.com/google/go-tpm", module + "verifier/store",
			"github.com/zitadel/", "github.com/coreos/go-oidc"}, except: []string{"github.com/nats-io/nats-server/v2/conf"}},
		// The agent side does not link the verifier.
		{pkg: "agent/client", deny: []string{module + "verifier", "github.com/nats-io/nats-server"}},
		{pkg: "agent", deny: []string{module + "verifier", "github.com/nats-io/nats-server"}},
		// Library packages take typed config: flags and files are cmd/'s.
		// The test OpenID provider (zitadel/oidc's example server) is for
		// tests only: no binary links it.
		{pkg: "verifier", deny: []string{"github.com/spf13/", "github.com/zitadel/", module + "internal/oidctest"}},
		{pkg: "cmd/tpmauthn-verifier", deny: []string{"github.com/zitadel/", module + "internal/oidctest"}},
		// Rooms below the transports do not reach up into them.
		{pkg: "verifier/store", deny: []string{module + "verifier/fleet", module + "verifier/callout", module + "verifier/natsapi"}},
		{pkg: "verifier/fleet", deny: []string{module + "verifier/sessions", module + "verifier/callout", module + "verifier/natsapi", module + "verifier/authn"}},
		{pkg: "verifier/authn", deny: []string{module + "verifier/callout", module + "verifier/natsapi", module + "verifier/fleet"}},
		{pkg: "verifier/callout", deny: []string{module + "verifier/natsapi", module + "verifier/store", module + "verifier/fleet"}},
	} {
		t.Run(strings.ReplaceAll(tc.pkg, "/", "_"), func(t *testing.T) {
			for _, d := range deps(t, tc.pkg) {
				if slices.Contains(tc.except, d) {
					continue
				}
				for _, p := range tc.deny {
					if d == p || strings.HasPrefix(d, p+"/") || (strings.HasSuffix(p, "/") && strings.HasPrefix(d, p)) {
						t.Errorf("%s depends on %s", tc.pkg, d)
					}
				}
				if tc.allow == nil {
					continue
				}
				ok := false
				for _, p := range tc.allow {
					ok = ok || d == p || strings.HasPrefix(d, p+"/")
				}
				if !ok {
					t.Errorf("%s depends on %s; it may import only %v beside the standard library", tc.pkg, d, tc.allow)
				}
			}
		})
	}
}

// Nothing but verifier/store lists a bucket's keys with nats.go's
// ListKeys, whose channel ends silently when its context ends: a list cut
// short would pass for the whole bucket (threat model R10). store.Keys and
// store.List return all or an error.
func TestNoListKeysOutsideStore(t *testing.T) {
	out, err := exec.Command("git", "-C", "../..", "grep", "-n", "-E", "-e", `\.(ListKeys|ListKeysFiltered)\(|\.Keys\([^)]`,
		"--", "*.go", ":!verifier/store/*", ":!*_test.go").Output()
	var exit *exec.ExitError
	if errors.As(err, &exit) && exit.ExitCode() == 1 && len(out) == 0 {
		return // git grep exits 1 when nothing matches
	}
	if err != nil {
		t.Fatalf("git grep: %v", err)
	}
	var bad []string
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		// store.Keys is the one to use; maps.Keys is not a bucket's.
		if !strings.Contains(line, "store.Keys(") && !strings.Contains(line, "maps.Keys(") {
			bad = append(bad, line)
		}
	}
	if len(bad) > 0 {
		t.Fatalf("a bucket's keys listed outside verifier/store (use store.Keys):\n%s", strings.Join(bad, "\n"))
	}
}
