package record

import (
	"errors"
	"testing"
	"time"

	"github.com/tpmauthn/tpmauthn/api"
)

func TestCredentialTransition(t *testing.T) {
	const (
		active      = api.CredentialActive
		quarantined = api.CredentialQuarantined
		revoked     = api.CredentialRevoked
	)
	for _, tc := range []struct {
		name     string
		from, to api.CredentialStatus
		ok       bool
	}{
		{"quarantine", active, quarantined, true},
		{"revoke", active, revoked, true},
		{"release", quarantined, active, true},
		{"revokeQuarantined", quarantined, revoked, true},
		{"revokeAgain", revoked, revoked, true},
		// Revoked is final: a tamper signal must not turn a revocation into
		// a quarantine an operator can release, nor a release undo it.
		{"quarantineRevoked", revoked, quarantined, false},
		{"releaseRevoked", revoked, active, false},
		{"unknownStatus", "retired", active, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			now := time.Unix(1000, 0)
			c := &Credential{ID: "c1", Status: tc.from, Reason: "before"}
			err := c.Transition(tc.to, "why", now)
			if tc.ok != (err == nil) || (!tc.ok && !errors.Is(err, ErrTransition)) {
				t.Fatalf("%s -> %s: %v, want ok=%v", tc.from, tc.to, err, tc.ok)
			}
			switch {
			case !tc.ok && (c.Status != tc.from || c.Reason != "before"):
				t.Fatalf("refused change left %s (%q), want it untouched", c.Status, c.Reason)
			case tc.ok && c.Status != tc.to:
				t.Fatalf("status %s, want %s", c.Status, tc.to)
			case tc.ok && tc.from != tc.to && (c.Reason != "why" || !c.Updated.Equal(now)):
				t.Fatalf("reason %q updated %v, want the change recorded", c.Reason, c.Updated)
			}
		})
	}
}

func TestHostTransition(t *testing.T) {
	for _, tc := range []struct {
		name     string
		from, to api.HostStatus
		ok       bool
	}{
		{"approve", api.HostPending, api.HostActive, true},
		{"revokePending", api.HostPending, api.HostRevoked, true},
		{"revoke", api.HostActive, api.HostRevoked, true},
		{"offboard", api.HostActive, api.HostOffboarded, true},
		{"offboardRevoked", api.HostRevoked, api.HostOffboarded, true},
		{"approveRevoked", api.HostRevoked, api.HostActive, false},
		{"reactivateOffboarded", api.HostOffboarded, api.HostActive, false},
		{"revokeOffboarded", api.HostOffboarded, api.HostRevoked, false},
		{"backToPending", api.HostActive, api.HostPending, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := &Host{ID: "h-1", Status: tc.from}
			err := h.Transition(tc.to, "why", time.Now())
			if tc.ok != (err == nil) || (!tc.ok && !errors.Is(err, ErrTransition)) {
				t.Fatalf("%s -> %s: %v, want ok=%v", tc.from, tc.to, err, tc.ok)
			}
			if want := map[bool]api.HostStatus{true: tc.to, false: tc.from}[tc.ok]; h.Status != want {
				t.Fatalf("status %s, want %s", h.Status, want)
			}
		})
	}
}

// A reissue allows a new registration only in place of the revoked
// credential the index names; it never changes that credential's status.
func TestReissueAllowed(t *testing.T) {
	at := time.Now()
	tests := []struct {
		name string
		idx  WorkloadIndex
		cur  *Credential
		want bool
	}{
		{"revokedReissued", WorkloadIndex{Credential: "c", Reissued: at}, &Credential{ID: "c", Status: api.CredentialRevoked}, true},
		{"notReissued", WorkloadIndex{Credential: "c"}, &Credential{ID: "c", Status: api.CredentialRevoked}, false},
		{"active", WorkloadIndex{Credential: "c", Reissued: at}, &Credential{ID: "c", Status: api.CredentialActive}, false},
		{"quarantined", WorkloadIndex{Credential: "c", Reissued: at}, &Credential{ID: "c", Status: api.CredentialQuarantined}, false},
		{"otherCredential", WorkloadIndex{Credential: "c", Reissued: at}, &Credential{ID: "d", Status: api.CredentialRevoked}, false},
		{"noRecord", WorkloadIndex{Credential: "c", Reissued: at}, nil, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.idx.ReissueAllowed(tc.cur); got != tc.want {
				t.Fatalf("ReissueAllowed = %v, want %v", got, tc.want)
			}
		})
	}
}
