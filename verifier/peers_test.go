package verifier_test

import (
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tpmauthn/tpmauthn/internal/eventually"
	"github.com/tpmauthn/tpmauthn/internal/fleettest"
	"github.com/tpmauthn/tpmauthn/verifier/keys"
	"github.com/tpmauthn/tpmauthn/verifier/peers"
)

// P-16c's residual, made visible: a verifier instance of an older version
// (its connection named without the fields tag) drops the regroup's fence
// fields when it rewrites a record. The instances of this version find it
// among the servers' connections, alert once (audited) and keep a gauge
// until it is gone; the instance itself is not taken for an older one.
func TestOlderVerifierAlerted(t *testing.T) {
	f := fleettest.New(t, func(f *fleettest.Fleet) {
		f.Config.MetricsListen = "127.0.0.1:0"
		f.Config.PeersEvery = 100 * time.Millisecond
	})
	gauge := func() string {
		resp, err := http.Get("http://" + f.Verifier.MetricsAddr() + "/metrics")
		if err != nil {
			return err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "tpmauthn_older_verifiers ") {
				return l
			}
		}
		return "no gauge"
	}
	olderAlerts := func() int {
		n := 0
		for _, e := range f.AuditEvents(t) {
			if e.Kind == "alert."+peers.AlertOlderVerifier {
				n++
			}
		}
		return n
	}
	want := func(w string) func() error {
		return func() error {
			if g := gauge(); g != w {
				return fmt.Errorf("%s, want %s", g, w)
			}
			return nil
		}
	}
	// Alone: nothing older, no alert.
	eventually.Until(t, 5*time.Second, want("tpmauthn_older_verifiers 0"))

	kp, err := keys.LoadNKey(filepath.Join(f.Config.DataDir, "verifier.nk"))
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := kp.PublicKey()
	old, err := nats.Connect(f.URL(), fleettest.ClientTLS(t, f.Config.DataDir), nats.Nkey(pub, kp.Sign), nats.Name("tpmauthn-verifier"))
	if err != nil {
		t.Fatal(err)
	}
	eventually.Until(t, 10*time.Second, want("tpmauthn_older_verifiers 1"))
	eventually.Until(t, 10*time.Second, func() error {
		if n := olderAlerts(); n != 1 {
			return fmt.Errorf("%d older_verifier alerts in the trail, want 1", n)
		}
		return nil
	})

	old.Close()
	eventually.Until(t, 10*time.Second, want("tpmauthn_older_verifiers 0"))
	time.Sleep(300 * time.Millisecond) // a few more checks: still one episode, one alert
	if n := olderAlerts(); n != 1 {
		t.Fatalf("%d older_verifier alerts, want 1 for one episode", n)
	}
}
