package record

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"

	"github.com/tpmauthn/tpmauthn/api"
)

// Secrets in login records never reach a log line.
func TestLoginSecretsRedacted(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewJSONHandler(&buf, nil))
	log.Info("x", "state", &LoginState{IdP: "okta", Nonce: "NONCE-SECRET", PKCEVerifier: "PKCE-SECRET"},
		"result", api.LoginResult{AccessToken: "GRANT-SECRET", Person: api.Person{ID: "okta_1"}},
		"device", api.DeviceAuthResponse{DeviceCode: "DEVICE-SECRET", UserCode: "BCDF-GHJK"})
	out := buf.String()
	for _, s := range []string{"NONCE-SECRET", "PKCE-SECRET", "GRANT-SECRET", "DEVICE-SECRET"} {
		if strings.Contains(out, s) {
			t.Errorf("%s logged: %s", s, out)
		}
	}
	if !strings.Contains(out, "[REDACTED]") || !strings.Contains(out, "okta_1") {
		t.Fatalf("log %s", out)
	}
}

func TestPersonID(t *testing.T) {
	a, b, c := PersonID("okta", "x"), PersonID("entra", "x"), PersonID("okta", "y")
	if a == b || a == c || !strings.HasPrefix(a, "okta_") || len(a) != len("okta_")+32 {
		t.Fatalf("%s %s %s", a, b, c)
	}
	// A subject with dots, wildcards or spaces still gives one subject token.
	if id := PersonID("okta", "a.b *>"); strings.ContainsAny(id, ".*> ") {
		t.Fatalf("%s", id)
	}
}
