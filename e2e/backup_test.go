package e2e

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/audit"
	"github.com/tpmauthn/tpmauthn/internal/fleettest"
	"github.com/tpmauthn/tpmauthn/verifier"
	"github.com/tpmauthn/tpmauthn/verifier/backup"
	"github.com/tpmauthn/tpmauthn/verifier/record"
	"github.com/tpmauthn/tpmauthn/verifier/restore"
)

func runCtl(t *testing.T, ctl string, args ...string) (string, error) {
	t.Helper()
	out, err := exec.Command(ctl, args...).CombinedOutput()
	return string(out), err
}

// fleetState is what a restore must bring back: the records as the
// operator API shows them, and the status counts.
type fleetState struct {
	Hosts       []record.Host
	Credentials []record.Credential
	Tokens      []record.Token
	Status      api.Status
}

func readState(t *testing.T, nc *nats.Conn) fleetState {
	t.Helper()
	var s fleetState
	for op, dst := range map[string]any{"host.list": &s.Hosts, "credential.list": &s.Credentials, "token.list": &s.Tokens, "status": &s.Status} {
		if code := fleettest.Admin(t, nc, op, nil, dst); code != "" {
			t.Fatalf("%s: %s", op, code)
		}
	}
	slices.SortFunc(s.Hosts, func(a, b record.Host) int { return strings.Compare(a.ID, b.ID) })
	slices.SortFunc(s.Credentials, func(a, b record.Credential) int { return strings.Compare(a.ID, b.ID) })
	slices.SortFunc(s.Tokens, func(a, b record.Token) int { return strings.Compare(a.ID, b.ID) })
	return s
}

func jsonOf(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestBackupRestore: a fleet with a host, its credential, tokens and an
// audit trail is backed up with tpmauthnctl, restored into a fresh data
// directory, and served by a new verifier with a new embedded server: the
// same records, an audit trail that verifies and goes on, and the original
// agent, its data dir untouched, connects to it.
func TestBackupRestore(t *testing.T) {
	f := fleettest.New(t)
	ctl := buildCtl(t)
	h := f.NewHost(t)
	for range 2 {
		nc, err := h.Connect(t)
		if err != nil {
			t.Fatal(err)
		}
		nc.Close()
	}
	f.Token(t, time.Hour, "demo") // a valid token, unused
	before := readState(t, f.Op)
	if len(before.Hosts) != 1 || len(before.Credentials) == 0 || len(before.Tokens) != 2 {
		t.Fatalf("fleet before: %d hosts, %d credentials, %d tokens", len(before.Hosts), len(before.Credentials), len(before.Tokens))
	}

	bdir := filepath.Join(t.TempDir(), "backup")
	if out, err := runCtl(t, ctl, "--data-dir", f.Config.DataDir, "backup", bdir); err != nil {
		t.Fatalf("backup: %v\n%s", err, out)
	}
	for _, p := range []string{bdir, filepath.Join(bdir, backup.KeysDir, "issuer.nk"), filepath.Join(bdir, backup.AuditFile)} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm()&0o077 != 0 {
			t.Errorf("%s is %v: a backup holds the fleet's secrets", p, fi.Mode().Perm())
		}
	}
	bk, err := backup.Open(bdir)
	if err != nil {
		t.Fatal(err)
	}
	var backedUp []audit.RawEvent
	if err := bk.Messages(func(m backup.Message) error {
		for _, line := range bytes.Split(m.Data, []byte{'\n'}) {
			backedUp = append(backedUp, audit.RawEvent{Msg: m.Msg, Data: line})
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	f.Verifier.Close() // the fleet's verifier is lost

	newDir := filepath.Join(t.TempDir(), "restored")
	restoreStart := time.Now()
	if out, err := runCtl(t, ctl, "--data-dir", newDir, "restore", bdir); err != nil {
		t.Fatalf("restore: %v\n%s", err, out)
	}
	cfg := f.Config
	cfg.DataDir, cfg.Logger = newDir, fleettest.Logger(t, "restored")
	v2 := fleettest.StartVerifier(t, cfg)
	if _, err := os.Stat(backup.StagingDir(newDir)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the staged restore is still there after the import: %v", err)
	}
	op2 := fleettest.OperatorConn(t, newDir, v2.ClientURL())
	after := readState(t, op2)
	for _, c := range []struct {
		what      string
		got, want any
	}{
		{"hosts", after.Hosts, before.Hosts},
		{"credentials", after.Credentials, before.Credentials},
		{"tokens", after.Tokens, before.Tokens},
		{"status hosts", after.Status.Hosts, before.Status.Hosts},
		{"status credentials", after.Status.Credentials, before.Status.Credentials},
		{"status tokens", after.Status.Tokens, before.Status.Tokens},
		{"audit key", after.Status.AuditKey, before.Status.AuditKey},
	} {
		if g, w := jsonOf(t, c.got), jsonOf(t, c.want); g != w {
			t.Errorf("restored %s differ:\n got %s\nwant %s", c.what, g, w)
		}
	}

	// The original agent, its data dir unchanged, is pointed at the
	// restored verifier and its workload connects.
	if err := h.Agent.Close(); err != nil {
		t.Fatal(err)
	}
	h.Config.NATSURL = v2.ClientURL()
	h.Start(t)
	nc, err := h.Connect(t)
	if err != nil {
		t.Fatalf("the original agent's workload against the restored verifier: %v", err)
	}
	nc.Close()
	logFault(t, "verifier started from a backup restored into a fresh directory", [4]int64{}, [4]int64{1, 1, 0, 0}, time.Since(restoreStart))

	// The trail holds the backed-up events unchanged, then the restore and
	// the new connect, and the whole chain verifies.
	v2.FlushAudit()
	var raws []audit.RawEvent
	fleettest.Admin(t, op2, "audit.read", api.AuditReadRequest{From: 1, Max: 1000}, &raws)
	if len(raws) <= len(backedUp) {
		t.Fatalf("restored trail has %d events, the backup %d: no new events", len(raws), len(backedUp))
	}
	for i, r := range backedUp {
		if string(raws[i].Data) != string(r.Data) || raws[i].Msg != r.Msg {
			t.Fatalf("restored event %d (message %d) differs from the original (message %d)", i, raws[i].Msg, r.Msg)
		}
	}
	var kinds []string
	for _, r := range raws[len(backedUp):] {
		var e audit.Event
		_ = json.Unmarshal(r.Data, &e)
		kinds = append(kinds, e.Kind+"/"+e.Result)
	}
	for _, want := range []string{"restore/ok", "connect/allow"} {
		if !slices.Contains(kinds, want) {
			t.Errorf("events after the restore lack %s: %v", want, kinds)
		}
	}
	if out, err := runCtl(t, ctl, "--data-dir", newDir, "audit", "verify"); err != nil {
		t.Fatalf("audit verify on the restored verifier: %v\n%s", err, out)
	}
}

// TestRestoreRefused: a restore never lands on a fleet, a damaged or
// edited backup is refused by name, and only the operator may read one.
func TestRestoreRefused(t *testing.T) {
	f := fleettest.New(t)
	ctl := buildCtl(t)
	h := f.NewHost(t)
	bdir := filepath.Join(t.TempDir(), "backup")
	if out, err := runCtl(t, ctl, "--data-dir", f.Config.DataDir, "backup", bdir); err != nil {
		t.Fatalf("backup: %v\n%s", err, out)
	}

	// A backup never overwrites another.
	if out, err := runCtl(t, ctl, "--data-dir", f.Config.DataDir, "backup", bdir); err == nil || !strings.Contains(out, "not empty") {
		t.Errorf("backup into a used directory: %v\n%s", err, out)
	}

	edited := filepath.Join(t.TempDir(), "edited")
	if err := os.CopyFS(edited, os.DirFS(bdir)); err != nil {
		t.Fatal(err)
	}
	hosts := filepath.Join(edited, filepath.FromSlash(backup.BucketFile("tpmauthn_hosts")))
	b, err := os.ReadFile(hosts)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(hosts, append(b, b...), 0o600); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name, dataDir, backup, want string
	}{
		{"over_live_fleet", f.Config.DataDir, bdir, "already holds a fleet"},
		{"hash_mismatch", filepath.Join(t.TempDir(), "new"), edited, "does not match its manifest"},
		{"not_a_backup", filepath.Join(t.TempDir(), "new"), t.TempDir(), "not a readable tpmauthn backup"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := runCtl(t, ctl, "--data-dir", tc.dataDir, "restore", tc.backup)
			if err == nil || !strings.Contains(out, tc.want) {
				t.Fatalf("restore = %v\n%s\nwant an error saying %q", err, out, tc.want)
			}
			if tc.name != "over_live_fleet" {
				if _, err := os.Stat(tc.dataDir); err == nil {
					entries, _ := os.ReadDir(tc.dataDir)
					if len(entries) > 0 {
						t.Errorf("a refused restore left %d files in %s", len(entries), tc.dataDir)
					}
				}
			}
		})
	}

	// A workload's session may not read a backup: the operator API is not
	// in its account.
	nc, err := h.Connect(t)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if _, err := nc.Request(api.SubjectAdminPrefix+"backup.read", []byte(`{}`), 2*time.Second); err == nil {
		t.Fatal("a workload read a backup page")
	}

	// A staged restore whose store is no longer empty (the verifier
	// imported it, then it was staged again by hand) is refused at start,
	// and so is a staged copy edited after it was staged.
	newDir := filepath.Join(t.TempDir(), "restored")
	if out, err := runCtl(t, ctl, "--data-dir", newDir, "restore", bdir); err != nil {
		t.Fatalf("restore: %v\n%s", err, out)
	}
	staged := filepath.Join(t.TempDir(), "staged")
	if err := os.CopyFS(staged, os.DirFS(backup.StagingDir(newDir))); err != nil {
		t.Fatal(err)
	}
	cfg := f.Config
	cfg.DataDir, cfg.Logger = newDir, fleettest.Logger(t, "restored")
	v2 := fleettest.StartVerifier(t, cfg)
	v2.Close()
	if err := os.CopyFS(backup.StagingDir(newDir), os.DirFS(staged)); err != nil {
		t.Fatal(err)
	}
	startErr := func() error {
		v, err := verifier.New(cfg)
		if err != nil {
			return err
		}
		err = v.Start(t.Context())
		if err == nil {
			v.Close()
		}
		return err
	}
	if err := startErr(); !errors.Is(err, restore.ErrLiveFleet) {
		t.Errorf("start with a restore staged over a fleet: %v, want ErrLiveFleet", err)
	}
	audit := filepath.Join(backup.StagingDir(newDir), backup.AuditFile)
	if err := os.WriteFile(audit, []byte("{}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := startErr(); !errors.Is(err, backup.ErrHashMismatch) {
		t.Errorf("start with an edited staged restore: %v, want ErrHashMismatch", err)
	}
}
