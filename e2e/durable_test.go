package e2e

import (
	"encoding/json"
	"testing"

	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/audit"
	"github.com/tpmauthn/tpmauthn/internal/fleettest"
)

// TestGrantOnlyAfterItsRecord: by the time a workload's connect returns,
// its allow event is already in the audit stream. No flush is asked for:
// the trail is read as an auditor would, right after each connect.
func TestGrantOnlyAfterItsRecord(t *testing.T) {
	f := fleettest.New(t)
	h := f.NewHost(t)
	for i := range 20 {
		nc, err := h.Connect(t)
		if err != nil {
			t.Fatalf("connect %d: %v", i, err)
		}
		cid, err := nc.GetClientID()
		if err != nil {
			t.Fatal(err)
		}
		nc.Close()
		var raw []audit.RawEvent
		f.MustAdmin(t, "audit.read", api.AuditReadRequest{From: 1, Max: 1000}, &raw)
		found := false
		for _, r := range raw {
			var e audit.Event
			if json.Unmarshal(r.Data, &e) == nil && e.Kind == "connect" && e.Result == audit.Allow && e.Client == cid {
				found = true
			}
		}
		if !found {
			t.Fatalf("connect %d (client %d) returned before its allow event was in the stream", i, cid)
		}
	}
}
