package verifier

import (
	"strings"
	"testing"

	"github.com/tpmauthn/tpmauthn/attestation"
)

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		mod  func(*Config)
		want string // "" : valid
	}{
		{"defaults", func(*Config) {}, ""},
		{"noDataDir", func(c *Config) { c.DataDir = "" }, "data_dir"},
		{"badApproval", func(c *Config) { c.Approval = "sometimes" }, "enrollment.approval"},
		{"badRPID", func(c *Config) { c.RPID = "single" }, "webauthn.rp_id"},
		{"pinsWithoutRoots", func(c *Config) { c.EKIntermediates = "/etc/tpmauthn/ek-intermediates.pem" }, "enrollment.ek_intermediates"},
		// The verifier's own origin is reserved: were it the credentials'
		// origin, the agent's generic endpoint would sign NATS logins.
		{"verifierOrigin", func(c *Config) { c.Origin = attestation.VerifierOrigin("tpmauthn.local") }, "webauthn.origin"},
		// Join tokens and logins never cross a network in clear (H6).
		{"clearBeyondLoopback", func(c *Config) { c.NATSListen, c.NATSTLS = "0.0.0.0:4222", TLSOff }, "nats.listen"},
		{"clearOnAnInterface", func(c *Config) { c.NATSListen, c.NATSTLS = "10.1.2.3:4222", TLSOff }, "beyond loopback"},
		{"clearOnLoopback", func(c *Config) { c.NATSListen, c.NATSTLS = "127.0.0.1:4222", TLSOff }, ""},
		{"autoBeyondLoopback", func(c *Config) { c.NATSListen = "0.0.0.0:4222" }, ""},
		{"badTLSMode", func(c *Config) { c.NATSTLS = "maybe" }, "nats.tls"},
		{"certWithoutKey", func(c *Config) { c.NATSTLSCert = "/etc/cert.pem" }, "nats.tls_key"},
		// People's login codes and grants never cross a network in clear.
		{"httpClearBeyondLoopback", func(c *Config) { c.HTTPListen, c.HTTPTLS = "0.0.0.0:8443", TLSOff }, "http.listen"},
		{"httpClearOnLoopback", func(c *Config) { c.HTTPListen, c.HTTPTLS = "127.0.0.1:8080", TLSOff }, ""},
		{"httpAutoBeyondLoopback", func(c *Config) { c.HTTPListen = "0.0.0.0:8443" }, ""},
		{"httpPublicURLScheme", func(c *Config) { c.HTTPListen, c.HTTPPublicURL = "0.0.0.0:8443", "http://login.example.com" }, "http.public_url"},
		{"httpPublicURLPath", func(c *Config) { c.HTTPListen, c.HTTPPublicURL = "0.0.0.0:8443", "https://login.example.com/x" }, "http.public_url"},
		{"httpPublicURL", func(c *Config) { c.HTTPListen, c.HTTPPublicURL = "0.0.0.0:8443", "https://login.example.com" }, ""},
		{"httpPublicURLWithoutListen", func(c *Config) { c.HTTPPublicURL = "https://login.example.com" }, "http.listen"},
		{"httpCertWithoutKey", func(c *Config) { c.HTTPListen, c.HTTPTLSCert = "0.0.0.0:8443", "/etc/cert.pem" }, "http.tls_key"},
		{"httpBadTLSMode", func(c *Config) { c.HTTPListen, c.HTTPTLS = "127.0.0.1:8080", "maybe" }, "http.tls"},
		{"embeddedTLSWithCluster", func(c *Config) { c.NATSURL, c.NATSTLS = "tls://nats.example.com:4222", TLSOn }, "nats.ca"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := Config{DataDir: t.TempDir()}
			c.setDefaults()
			tc.mod(&c)
			err := c.Validate()
			if (err == nil) != (tc.want == "") || (err != nil && !strings.Contains(err.Error(), tc.want)) {
				t.Fatalf("Validate: %v, want %q", err, tc.want)
			}
		})
	}
}

func TestEmbeddedTLSMode(t *testing.T) {
	for _, tc := range []struct {
		listen, mode string
		want         bool
	}{
		{"127.0.0.1:4222", TLSAuto, false},
		{"[::1]:4222", TLSAuto, false},
		{"localhost:4222", TLSAuto, false},
		{"0.0.0.0:4222", TLSAuto, true},
		{"10.1.2.3:4222", TLSAuto, true},
		{"127.0.0.1:4222", TLSOn, true},
		{"127.0.0.1:4222", TLSOff, false},
	} {
		c := Config{NATSListen: tc.listen, NATSTLS: tc.mode}
		if got := c.embeddedTLS(); got != tc.want {
			t.Errorf("%s %s: TLS %v, want %v", tc.listen, tc.mode, got, tc.want)
		}
	}
}

// TestKeepRPID: the first start records the RP ID; a later start with
// another is refused, naming the one to use; the same one starts.
func TestKeepRPID(t *testing.T) {
	dir := t.TempDir()
	if err := keepRPID(dir, "fleet.example.com"); err != nil {
		t.Fatal(err)
	}
	if err := keepRPID(dir, "fleet.example.com"); err != nil {
		t.Fatalf("the same RP ID again: %v", err)
	}
	err := keepRPID(dir, "other.example.com")
	if err == nil || !strings.Contains(err.Error(), "--rp-id fleet.example.com") {
		t.Fatalf("another RP ID: %v", err)
	}
}
