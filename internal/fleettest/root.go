package fleettest

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"

	"github.com/tpmauthn/tpmauthn/verifier/keys"
)

// WithRoot runs the fleet's verifier on a nats-server of its own (not the
// embedded one) whose configuration is keys.ServerConfig plus one user the
// product never hands out: an administrator of the AUTH account with no
// permissions set, connected as f.Root. It is what an operator of the NATS
// servers holds, who bypasses the product; the attack tests use it to do
// what the product's own credentials may not.
func WithRoot() Option { return func(f *Fleet) { f.withRoot = true } }

// RootMaxStore is WithRoot with the server's JetStream file store bounded
// to n bytes (max_file_store), so that a test can fill it. JetStream
// reserves a stream's MaxBytes when the stream is created: n must hold the
// bounded buckets' reservations (two of 64 MiB, one of 16 MiB) and the audit stream's
// (Config.Audit.MaxBytes; negative reserves nothing).
func RootMaxStore(n int64) Option {
	return func(f *Fleet) { f.withRoot, f.rootMaxStore = true, n }
}

// startRoot starts WithRoot's server and points f.Config at it.
func (f *Fleet) startRoot(t testing.TB) {
	t.Helper()
	ks, _, err := keys.LoadOrCreate(f.Config.DataDir)
	if err != nil {
		t.Fatal(err)
	}
	admin, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := admin.PublicKey()
	o := keys.ServerConfigOptions{Listen: "127.0.0.1:-1", StoreDir: filepath.Join(t.TempDir(), "js")}
	if f.rootMaxStore > 0 {
		o.Extra = fmt.Sprintf("jetstream { store_dir: %q, max_file_store: %d }", o.StoreDir, f.rootMaxStore)
		o.StoreDir = "" // the block above replaces the one ServerConfig writes
	}
	conf := keys.ServerConfig(ks, o)
	withAdmin := strings.Replace(conf, "users: [\n", "users: [\n      { nkey: "+pub+" }  # test only: an administrator outside the product\n", 1)
	withAdmin = strings.Replace(withAdmin, "auth_users: [ ", "auth_users: [ "+pub+", ", 1)
	if withAdmin == conf || strings.Count(withAdmin, pub) != 2 {
		t.Fatal("fleettest: cannot add the administrator to keys.ServerConfig's text (has its layout changed?)")
	}
	path := filepath.Join(t.TempDir(), "nats-server.conf")
	if err := os.WriteFile(path, []byte(withAdmin), 0o600); err != nil {
		t.Fatal(err)
	}
	opts, err := server.ProcessConfigFile(path)
	if err != nil {
		t.Fatal(err)
	}
	opts.NoSigs, opts.NoLog = true, true
	srv, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	srv.Start()
	t.Cleanup(srv.Shutdown)
	if !srv.ReadyForConnections(15 * time.Second) {
		t.Fatal("fleettest: nats-server not ready within 15s")
	}
	f.Config.NATSURL = srv.ClientURL()
	nc, err := nats.Connect(srv.ClientURL(), nats.Nkey(pub, admin.Sign), nats.Name("fleettest-root"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	f.Root = nc
	if f.RootJS, err = jetstream.New(nc); err != nil {
		t.Fatal(err)
	}
}
