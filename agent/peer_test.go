package agent

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// H3: systemd_unit was read from any *.service in the cgroup path, so a
// user's own unit (systemd-run --user --unit=billing) or a directory in the
// user's delegated cgroup tree named billing.service passed for the system
// unit billing.service. Only a system unit's cgroup names a unit now.
func TestAttackUserUnitPosesAsSystemUnit(t *testing.T) {
	for _, tc := range []struct {
		name, cgroup, want string
	}{
		{"systemService", "0::/system.slice/billing.service", "billing.service"},
		{"systemScope", "0::/machine.slice/libpod-1234.scope", "libpod-1234.scope"},
		{"customSlice", "0::/apps.slice/billing.service", "billing.service"},
		// A delegated unit's sub-cgroups stay that unit's.
		{"delegatedSubCgroup", "0::/system.slice/ci.service/billing.service", "ci.service"},
		{"userUnit", "0::/user.slice/user-1000.slice/user@1000.service/app.slice/billing.service", ""},
		{"userScope", "0::/user.slice/user-1000.slice/session-3.scope", ""},
		{"userManagerElsewhere", "0::/system.slice/user@1000.service/billing.service", ""},
		{"root", "0::/", ""},
		{"cgroupV1Only", "1:name=systemd:/system.slice/billing.service", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := filepath.Join(t.TempDir(), "cgroup")
			if err := os.WriteFile(f, []byte(tc.cgroup+"\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			if got := systemdUnit(f); got != tc.want {
				t.Fatalf("systemdUnit(%s) = %q, want %q", tc.cgroup, got, tc.want)
			}
		})
	}
}

// H2: an exe or exe_sha256 selector alone named any process that connects
// and then execs the program (pid and start time survive execve). Such a
// configuration is refused, saying what to add.
func TestAttackExecSwapExeOnlySelectorRefused(t *testing.T) {
	uid := uint32(1001)
	for _, tc := range []struct {
		name  string
		match Selector
		err   string // "" : accepted
	}{
		{"exeOnly", Selector{Exe: "/usr/local/bin/copilot"}, "cannot name a caller alone"},
		{"hashOnly", Selector{ExeSHA256: strings.Repeat("ab", 32)}, "cannot name a caller alone"},
		{"uidAndExe", Selector{UID: &uid, Exe: "/usr/local/bin/copilot"}, ""},
		{"unit", Selector{SystemdUnit: "billing.service"}, ""},
		{"group", Selector{Group: "billing"}, ""},
		{"empty", Selector{}, "needs at least one"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := validateWorkloads([]Workload{{Name: "w", Match: tc.match}})
			if (err == nil) != (tc.err == "") || (err != nil && !strings.Contains(err.Error(), tc.err)) {
				t.Fatalf("validate: %v, want %q", err, tc.err)
			}
		})
	}
}

// P6: the README's own recipe left the join token world-readable, and the
// agent read it as it was: anyone on the host could enroll a host of their
// own with it first. A token file every user can read is refused.
func TestAttackWorldReadableJoinToken(t *testing.T) {
	for _, tc := range []struct {
		name string
		mode os.FileMode
		ok   bool
	}{
		{"owner", 0o600, true},
		{"group", 0o640, true},
		{"world", 0o644, false},
		{"worldWritable", 0o602, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := filepath.Join(t.TempDir(), "join-token")
			if err := os.WriteFile(f, []byte("tpmauthn-join-x\n"), tc.mode); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(f, tc.mode); err != nil { // past the umask
				t.Fatal(err)
			}
			a := &Agent{cfg: Config{TokenFile: f}}
			tok, err := a.readToken()
			if tc.ok != (err == nil) || (tc.ok && tok != "tpmauthn-join-x") {
				t.Fatalf("mode %v: %q, %v; want ok=%v", tc.mode, tok, err, tc.ok)
			}
		})
	}
}
