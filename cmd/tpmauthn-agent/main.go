// Command tpmauthn-agent is the tpmauthn host agent: a TPM-backed WebAuthn
// platform authenticator for the workloads on this host.
package main

import (
	"fmt"
	"os"
)

func main() {
	if err := newRootCmd().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "tpmauthn-agent:", err)
		os.Exit(1)
	}
}
