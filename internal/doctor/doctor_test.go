package doctor

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

func TestPrint(t *testing.T) {
	cs := []Check{Pass("TPM", "IBM"), Skip("unit", "no systemd"), Fail("socket", "mode 0600 \x1b[2J", "chmod 666 /run/tpmauthn/agent.sock")}
	if !Failed(cs) || Failed(cs[:2]) {
		t.Fatal("Failed")
	}
	var b bytes.Buffer
	if err := Print(&b, cs, false); err != nil {
		t.Fatal(err)
	}
	want := "✓ TPM: IBM\n– unit: no systemd\n✗ socket: mode 0600 ?[2J\n    fix: chmod 666 /run/tpmauthn/agent.sock\n"
	if b.String() != want {
		t.Fatalf("got %q, want %q", b.String(), want)
	}
	b.Reset()
	if err := Print(&b, cs, true); err != nil {
		t.Fatal(err)
	}
	var back []Check
	if err := json.Unmarshal(b.Bytes(), &back); err != nil || len(back) != 3 || back[2].OK || !strings.Contains(back[2].Fix, "chmod") {
		t.Fatalf("json %s: %v", b.String(), err)
	}
}
