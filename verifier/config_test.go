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
