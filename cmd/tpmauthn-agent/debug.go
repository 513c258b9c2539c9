package main

import (
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/viper"
	"github.com/tpmauthn/tpmauthn/agent"
	"github.com/tpmauthn/tpmauthn/agent/tpm"
	"github.com/tpmauthn/tpmauthn/attestation"
	"github.com/tpmauthn/tpmauthn/internal/pemca"
)

func newDebugCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "debug",
		Short: "Developer commands: standard WebAuthn output anyone can check",
		Long: `Developer commands that drive the TPM directly, without a verifier.

debug register prints a WebAuthn registration response (attestation format
"tpm") and writes the CA that certified the AK to CA-DIR/ca.pem; debug assert
prints an assertion for the same credential. Any WebAuthn library given ca.pem
as the attestation root can verify both.`,
	}
	cmd.AddCommand(newDebugRegisterCmd(), newDebugAssertCmd())
	return cmd
}

func debugFlags(cmd *cobra.Command) {
	f := cmd.Flags()
	f.String("tpm", tpm.DefaultDevice, "TPM: a device such as /dev/tpmrm0, or swtpm://127.0.0.1:2321")
	f.String("data-dir", defaultDebugDir(), "directory for the AK, its certificate and credentials")
	f.String("challenge", "", "challenge, base64url (at least 16 bytes)")
}

func defaultDebugDir() string {
	if d, err := os.UserCacheDir(); err == nil {
		return filepath.Join(d, "tpmauthn-debug")
	}
	return "tpmauthn-debug"
}

func newDebugRegisterCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "register",
		Short: "Create a TPM credential and print its WebAuthn registration response",
		Example: `  tpmauthn-agent debug register --tpm swtpm://127.0.0.1:2321 --rp-id fleet.example.com \
    --origin tpmauthn://fleet.example.com --challenge $(head -c32 /dev/urandom | basenc --base64url) --ca-dir ./ca`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			v, err := newViper(cmd)
			if err != nil {
				return err
			}
			return debugRegister(cmd.OutOrStdout(), cmd.ErrOrStderr(), v)
		},
	}
	debugFlags(cmd)
	f := cmd.Flags()
	f.String("rp-id", "", "relying party ID: a domain name such as fleet.example.com")
	f.String("origin", "", "origin for clientDataJSON (default tpmauthn://RP-ID)")
	f.String("ca-dir", "", "directory of the CA that certifies the AK (ca.pem, ca-key.pem); a throwaway CA is created there if none exists")
	f.String("name", "debug", "workload name recorded with the credential")
	return cmd
}

func newDebugAssertCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "assert",
		Short: "Print a WebAuthn assertion for a credential made by debug register",
		RunE: func(cmd *cobra.Command, _ []string) error {
			v, err := newViper(cmd)
			if err != nil {
				return err
			}
			return debugAssert(cmd.OutOrStdout(), v)
		},
	}
	debugFlags(cmd)
	cmd.Flags().String("credential", "", "credential ID, base64url (default: the newest)")
	return cmd
}

func openAuthenticator(v *viper.Viper) (*agent.Authenticator, func(), error) {
	tp, err := tpm.Open(v.GetString("tpm"))
	if err != nil {
		return nil, nil, err
	}
	a, err := agent.NewAuthenticator(tp, v.GetString("data-dir"))
	if err != nil {
		_ = tp.Close()
		return nil, nil, err
	}
	return a, func() { _ = tp.Close() }, nil
}

func decodeChallenge(s string) ([]byte, error) {
	if s == "" {
		return nil, errors.New("--challenge is required (base64url, e.g. $(head -c32 /dev/urandom | basenc --base64url))")
	}
	b, err := attestation.DecodeB64URL(s)
	if err != nil {
		return nil, fmt.Errorf("--challenge: %w", err)
	}
	if len(b) < 16 {
		return nil, fmt.Errorf("--challenge is %d bytes; WebAuthn needs at least 16 (try: head -c32 /dev/urandom | basenc --base64url)", len(b))
	}
	return b, nil
}

func debugRegister(stdout, stderr io.Writer, v *viper.Viper) error {
	chal, err := decodeChallenge(v.GetString("challenge"))
	if err != nil {
		return err
	}
	rpID := v.GetString("rp-id")
	if rpID == "" || v.GetString("ca-dir") == "" {
		return errors.New("--rp-id and --ca-dir are required")
	}
	origin := v.GetString("origin")
	if origin == "" {
		origin = "tpmauthn://" + rpID
	}
	ca, caKey, created, err := loadOrCreateCA(v.GetString("ca-dir"))
	if err != nil {
		return err
	}
	if created {
		fmt.Fprintf(stderr, "created a throwaway CA in %s\n", v.GetString("ca-dir"))
	}
	a, closeTPM, err := openAuthenticator(v)
	if err != nil {
		return err
	}
	defer closeTPM()
	if !certifiedBy(a.AKCertificate(), ca) {
		fmt.Fprintln(stderr, "enrolling the AK with the CA (credential activation against the EK)...")
		if err := a.EnrollWithCA(ca, caKey); err != nil {
			return err
		}
	}
	resp, cred, err := a.Register(agent.RegisterOptions{Name: v.GetString("name"), RPID: rpID, Origin: origin, Challenge: chal})
	if err != nil {
		return err
	}
	fmt.Fprintf(stderr, "registered credential %s; its AK certificate chains to %s\n", cred.IDString(), filepath.Join(v.GetString("ca-dir"), "ca.pem"))
	return printJSON(stdout, resp)
}

func debugAssert(stdout io.Writer, v *viper.Viper) error {
	chal, err := decodeChallenge(v.GetString("challenge"))
	if err != nil {
		return err
	}
	a, closeTPM, err := openAuthenticator(v)
	if err != nil {
		return err
	}
	defer closeTPM()
	var id []byte
	if s := v.GetString("credential"); s != "" {
		if id, err = attestation.DecodeB64URL(s); err != nil {
			return fmt.Errorf("--credential: %w", err)
		}
	} else {
		creds, err := a.Credentials()
		if err != nil {
			return err
		}
		if len(creds) == 0 {
			return fmt.Errorf("no credential in %s: run 'tpmauthn-agent debug register' first", v.GetString("data-dir"))
		}
		id = creds[len(creds)-1].ID
	}
	as, err := a.Assert(id, chal)
	if err != nil {
		return err
	}
	return printJSON(stdout, as.JSON())
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func certifiedBy(der []byte, ca *x509.Certificate) bool {
	if der == nil {
		return false
	}
	c, err := x509.ParseCertificate(der)
	return err == nil && c.CheckSignatureFrom(ca) == nil
}

// loadOrCreateCA reads DIR/ca.pem and DIR/ca-key.pem, or creates both.
func loadOrCreateCA(dir string) (*x509.Certificate, *ecdsa.PrivateKey, bool, error) {
	return pemca.LoadOrCreate(filepath.Join(dir, "ca.pem"), filepath.Join(dir, "ca-key.pem"), "tpmauthn debug CA", 10*365*24*time.Hour)
}
