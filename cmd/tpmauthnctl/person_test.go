package main

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/tpmauthn/tpmauthn/internal/fleettest"
	"github.com/tpmauthn/tpmauthn/verifier"
	"github.com/tpmauthn/tpmauthn/verifier/policy"
	"github.com/tpmauthn/tpmauthn/verifier/record"
)

// TestPersonCommands: person list, show, disable and enable against a
// verifier that has one person (provisioned as an IdP's SCIM would).
func TestPersonCommands(t *testing.T) {
	dir := t.TempDir()
	v := fleettest.StartVerifier(t, verifier.Config{DataDir: dir, NATSListen: "127.0.0.1:-1"})
	idp := &policy.IdP{Name: "okta", Issuer: "https://okta.example.com", SubjectClaim: "sub"}
	p, err := v.People().Provision(t.Context(), idp, "00u1", record.SCIMUser{UserName: "dana@example.com", ExternalID: "00u1", Active: true})
	if err != nil {
		t.Fatal(err)
	}
	out, err := ctl(t, "--data-dir", dir, "person", "list")
	if err != nil || !strings.Contains(out, p.ID) || !strings.Contains(out, "active") {
		t.Fatalf("person list = %q, %v", out, err)
	}
	out, err = ctl(t, "--data-dir", dir, "person", "disable", p.ID, "--reason", "left")
	if err != nil || !strings.Contains(out, "is disabled") {
		t.Fatalf("person disable = %q, %v", out, err)
	}
	out, err = ctl(t, "--data-dir", dir, "--json", "person", "show", p.ID)
	var shown record.Person
	if err != nil || json.Unmarshal([]byte(out), &shown) != nil || shown.Disabled.IsZero() || shown.DisabledReason != "left" {
		t.Fatalf("person show after disable = %q, %v", out, err)
	}
	out, err = ctl(t, "--data-dir", dir, "person", "enable", p.ID)
	if err != nil || !strings.Contains(out, "is active") {
		t.Fatalf("person enable = %q, %v", out, err)
	}
	if _, err := ctl(t, "--data-dir", dir, "person", "show", "okta_missing"); err == nil || !strings.Contains(err.Error(), "not_found") {
		t.Fatalf("person show of nobody: %v", err)
	}
}
