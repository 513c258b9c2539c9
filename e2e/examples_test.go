package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tpmauthn/tpmauthn/internal/fleettest"
)

// TestCExample: examples/c/workload.c, built with libnats (Debian
// libnats-dev), connects through the agent with a TPM-signed nonce,
// publishes under its role and receives its message.
func TestCExample(t *testing.T) {
	fleettest.Require(t)
	cc, err := exec.LookPath("cc")
	if err == nil {
		_, err = os.Stat("/usr/include/nats/nats.h")
	}
	switch {
	case err != nil && os.Getenv("CI") == "true":
		t.Fatal("the C example needs a C compiler and libnats: apt-get install -y gcc libnats-dev")
	case err != nil:
		t.Skip("no C compiler or libnats (apt-get install -y gcc libnats-dev)")
	}
	bin := filepath.Join(t.TempDir(), "workload")
	if out, err := exec.Command(cc, "-Wall", "-Werror", "-o", bin, "../examples/c/workload.c", "-lnats").CombinedOutput(); err != nil {
		t.Fatalf("build the C example: %v\n%s", err, out)
	}
	f := fleettest.New(t)
	h := f.NewHost(t)
	out, err := exec.Command(bin, h.Socket, f.URL(), "demo.c-example").CombinedOutput()
	if err != nil || !strings.Contains(string(out), `published and received on demo.c-example: "hello from C"`) {
		t.Fatalf("the C example: %v\n%s", err, out)
	}
	t.Logf("%s", out)
	// Outside its role the server refuses the subscription, and the
	// program says so.
	if out, err := exec.Command(bin, h.Socket, f.URL(), "billing.invoices").CombinedOutput(); err == nil {
		t.Fatalf("the C example published outside its role:\n%s", out)
	}
}
