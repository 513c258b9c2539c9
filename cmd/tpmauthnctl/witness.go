package main

import (
	"github.com/tpmauthn/tpmauthn/internal/atomicfile"

	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/tpmauthn/tpmauthn/audit"
)

// The witness is the audit chain's head as `audit verify` last verified it,
// kept on the operator's machine (threat model M3). The verifier cannot
// rewrite it, so a stream cut or re-created from an older prefix after that
// run is named by the next one, even when the verifier's own checkpoint was
// rewritten with it. It protects what was verified up to that run, no more:
// whoever holds the verifier's issuer key can still sign any chain after
// it, and an operator who never runs verify has no witness. It is one file
// per audit key (one fleet), which a wiped config directory loses.

// witnessFile is the witness's path for key: flag, or the default in the
// user's config directory ("" with flag "none").
func (a *app) witnessFile(flag, key string) (string, error) {
	switch flag {
	case "none":
		return "", nil
	case "":
	default:
		return flag, nil
	}
	dir, err := os.UserConfigDir()
	if err != nil {
		return "", fmt.Errorf("no config directory for the audit witness (%w): give one with --witness FILE, or --witness none", err)
	}
	return filepath.Join(dir, "tpmauthn", "audit-witness-"+key+".json"), nil
}

// readWitness reads the witness at path (nil when there is none yet).
func readWitness(path string) (*audit.Checkpoint, error) {
	if path == "" {
		return nil, nil
	}
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("audit witness: %w", err)
	}
	var cp audit.Checkpoint
	if err := json.Unmarshal(b, &cp); err != nil {
		return nil, fmt.Errorf("audit witness %s does not decode (%w): restore it, or move it away to start a new one", path, err)
	}
	return &cp, nil
}

// writeWitness replaces the witness at path with cp, atomically.
func writeWitness(path string, cp audit.Checkpoint) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	b, err := json.MarshalIndent(&cp, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.Write(path, b, 0o600)
}
