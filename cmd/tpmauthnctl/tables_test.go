package main

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/verifier/record"
)

var update = flag.Bool("update", false, "rewrite the golden tables in testdata/")

// golden compares got with testdata/name (rewritten with -update).
func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (go test -run %s -update writes it)", err, t.Name())
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s:\n--- got\n%s--- want\n%s", name, got, want)
	}
}

// rotated is a workload's rotation chain: the first credential, replaced
// and retiring, and its successor, of the same lineage; and a workload's
// only credential, with a rotation requested.
func rotated() []record.Credential {
	at := func(h int) time.Time { return time.Date(2026, 3, 1, h, 0, 0, 0, time.UTC) }
	return []record.Credential{
		{ID: "cred-first", Workload: "billing", Host: "h-0123456789abcdef", Status: api.CredentialActive, Counter: 41,
			Created: at(8), Updated: at(9), ReplacedBy: "cred-second", Retires: at(10)},
		{ID: "cred-second", Workload: "billing", Host: "h-0123456789abcdef", Status: api.CredentialActive, Counter: 2,
			Created: at(9), Updated: at(9), Lineage: "cred-first"},
		{ID: "cred-other", Workload: "copilot", Host: "h-0123456789abcdef", Status: api.CredentialActive, Counter: 7,
			Created: at(8), Updated: at(8), RotateRequested: true},
	}
}

// TestCredentialTables: credential list and show give a rotation's state
// (lineage, replaced by, retires), not only --json.
func TestCredentialTables(t *testing.T) {
	zone := tableZone
	tableZone = time.UTC // not the machine's
	t.Cleanup(func() { tableZone = zone })
	cs := rotated()
	var b bytes.Buffer
	w := tabwriter.NewWriter(&b, 2, 4, 2, ' ', 0)
	credentialTable(w, cs)
	_ = w.Flush()
	golden(t, "credential-list.golden", b.Bytes())
	for _, c := range cs {
		b.Reset()
		w := tabwriter.NewWriter(&b, 2, 4, 2, ' ', 0)
		credentialFields(w, &c)
		_ = w.Flush()
		golden(t, "credential-show-"+c.ID+".golden", b.Bytes())
	}
}
