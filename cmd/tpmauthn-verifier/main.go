// Command tpmauthn-verifier enrolls hosts, registers their TPM credentials
// and answers NATS auth callout for them.
package main

import (
	"fmt"
	"os"
)

func main() {
	if err := newRootCmd().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "tpmauthn-verifier:", err)
		os.Exit(1)
	}
}
