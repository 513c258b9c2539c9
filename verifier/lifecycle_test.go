package verifier

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"go.uber.org/goleak"

	"github.com/tpmauthn/tpmauthn/verifier/peers"
)

// Close waits for every goroutine the verifier started, the embedded
// server's included: none is left once it returns, whether Start succeeded
// or failed, and a second Close does nothing. Start's ctx bounds start-up
// only: a verifier started with a short deadline keeps serving after it.
func TestCloseLeavesNoGoroutine(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a verifier with an embedded nats-server (skipped under -short)")
	}
	ignore := goleak.IgnoreCurrent()
	v, err := New(Config{DataDir: t.TempDir(), NATSListen: "127.0.0.1:-1"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	if err := v.Start(ctx); err != nil {
		t.Fatal(err)
	}
	cancel() // the caller's deadline for start-up is over: the verifier serves on
	if err := v.nc.Flush(); err != nil || v.callout == nil || v.Served() != 0 {
		t.Fatalf("after Start's ctx ended: %v", err)
	}
	// Two Closes at once: each returns only once shutdown is complete.
	var wg sync.WaitGroup
	for range 2 {
		wg.Go(func() {
			v.Close()
			if v.srv.Running() || v.audit.FlushWithin(time.Millisecond) {
				t.Error("a Close returned before the shutdown was complete")
			}
		})
	}
	wg.Wait()
	if err := goleak.Find(ignore); err != nil {
		t.Fatalf("goroutines left after Close: %v", err)
	}

	// A start that fails at its last step (the metrics address is bad),
	// with everything else started, undoes all of it.
	ignore = goleak.IgnoreCurrent()
	bad, err := New(Config{DataDir: t.TempDir(), NATSListen: "127.0.0.1:-1", MetricsListen: "127.0.0.1:-5"})
	if err != nil {
		t.Fatal(err)
	}
	if err := bad.Start(context.Background()); err == nil {
		bad.Close()
		t.Fatal("started with a metrics address that cannot be listened on")
	}
	bad.Close()
	if err := goleak.Find(ignore); err != nil {
		t.Fatalf("goroutines left after a failed Start: %v", err)
	}
}

// The verifier reaches its embedded server in memory, not over TCP: its
// connections have no remote address, and its server's INFO asks a TLS
// verifier for no TLS (which in memory would protect nothing).
func TestEmbeddedConnectionsInProcess(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a verifier with an embedded nats-server (skipped under -short)")
	}
	for _, mode := range []string{TLSOff, TLSOn} {
		t.Run(mode, func(t *testing.T) {
			v, err := New(Config{DataDir: t.TempDir(), NATSListen: "127.0.0.1:-1", NATSTLS: mode})
			if err != nil {
				t.Fatal(err)
			}
			if err := v.Start(context.Background()); err != nil {
				t.Fatal(err)
			}
			defer v.Close()
			cz, err := v.srv.Connz(&server.ConnzOptions{})
			if err != nil {
				t.Fatal(err)
			}
			names := map[string]bool{}
			for _, c := range cz.Conns {
				if strings.HasPrefix(c.Name, "tpmauthn-verifier") {
					names[c.Name] = true
					if c.Port != 0 || c.TLSVersion != "" {
						t.Errorf("%s: port %d, TLS %q: over the network", c.Name, c.Port, c.TLSVersion)
					}
				}
			}
			if !names[peers.Name()] || !names["tpmauthn-verifier-sys"] {
				t.Fatalf("the verifier's connections are not all there: %v", names)
			}
		})
	}
}
