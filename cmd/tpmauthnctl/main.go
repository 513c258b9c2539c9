// Command tpmauthnctl is the tpmauthn operator tool: join tokens, hosts,
// credentials and the NATS configuration for an existing cluster.
package main

import (
	"fmt"
	"os"
)

func main() {
	if err := newRootCmd().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "tpmauthnctl:", err)
		os.Exit(1)
	}
}
