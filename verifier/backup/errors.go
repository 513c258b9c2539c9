package backup

import "errors"

// Sentinel errors of backups and restores (errors.Is).
var (
	// ErrMalformed: the directory is not a backup this version reads (no
	// manifest, an unknown format, a line that does not decode).
	ErrMalformed = errors.New("not a readable tpmauthn backup")
	// ErrHashMismatch: a file differs from the manifest (size or
	// SHA-256): the backup was damaged or edited after it was written.
	ErrHashMismatch = errors.New("backup file does not match its manifest")
	// ErrAuditChain: the backup's audit trail does not verify with the
	// backup's audit key.
	ErrAuditChain = errors.New("backup audit trail does not verify")
	// ErrFleetExists: the target data directory already holds a fleet
	// (key files, a JetStream store or a staged restore).
	ErrFleetExists = errors.New("data directory already holds a fleet")
	// ErrNotEmpty: the directory to write a backup into is not empty.
	ErrNotEmpty = errors.New("backup directory is not empty")
)
