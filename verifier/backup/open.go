package backup

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"

	"github.com/tpmauthn/tpmauthn/audit"
	"github.com/tpmauthn/tpmauthn/verifier/keys"
)

// maxLine bounds a line of a backup file: an audit message is at most
// about 512 KiB (the writer splits larger batches), base64 a third more.
const maxLine = 4 << 20

// Backup is a backup directory whose files match its manifest.
type Backup struct {
	Dir      string
	Manifest Manifest
}

// Open reads dir's manifest and checks every file against it (size and
// SHA-256), and that it holds every shared key file and an issuer key that
// is the manifest's audit key. It does not verify the audit chain
// (VerifyAudit).
func Open(dir string) (*Backup, error) {
	b, err := os.ReadFile(filepath.Join(dir, ManifestFile))
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrMalformed, dir, err)
	}
	bk := &Backup{Dir: dir}
	if err := json.Unmarshal(b, &bk.Manifest); err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrMalformed, ManifestFile, err)
	}
	if bk.Manifest.Format != Format {
		return nil, fmt.Errorf("%w: format %d, this version reads %d", ErrMalformed, bk.Manifest.Format, Format)
	}
	for _, f := range bk.Manifest.Files {
		if !knownName(f.Name) {
			return nil, fmt.Errorf("%w: the manifest names %q", ErrMalformed, f.Name)
		}
		if err := checkFile(filepath.Join(dir, filepath.FromSlash(f.Name)), f); err != nil {
			return nil, err
		}
	}
	for _, k := range keys.Shared {
		if bk.file(KeysDir+"/"+k) == nil {
			return nil, fmt.Errorf("%w: key file %s missing", ErrMalformed, k)
		}
	}
	issuer, err := keys.LoadNKey(filepath.Join(dir, KeysDir, keys.IssuerFile))
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	if keys.Public(issuer) != bk.Manifest.AuditKey {
		return nil, fmt.Errorf("%w: the issuer key is not the manifest's audit key", ErrMalformed)
	}
	return bk, nil
}

// knownName reports whether name is a file a backup may hold: no path may
// leave the backup directory (or, staged, the data directory).
func knownName(name string) bool {
	if name == AuditFile {
		return true
	}
	dir, base := filepath.Split(filepath.FromSlash(name))
	switch dir {
	case KeysDir + string(filepath.Separator):
		return slices.Contains(keys.Shared, base)
	case KVDir + string(filepath.Separator):
		return slices.ContainsFunc(Buckets, func(b string) bool { return base == b+".jsonl" })
	}
	return false
}

func checkFile(path string, f File) error {
	r, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("%w: %s: %w", ErrHashMismatch, f.Name, err)
	}
	defer r.Close()
	h := sha256.New()
	n, err := io.Copy(h, r)
	if err != nil {
		return fmt.Errorf("backup %s: %w", f.Name, err)
	}
	if n != f.Bytes || hex.EncodeToString(h.Sum(nil)) != f.SHA256 {
		return fmt.Errorf("%w: %s (%d bytes, SHA-256 %s; the manifest says %d bytes, %s): the backup was damaged or edited; use another copy",
			ErrHashMismatch, f.Name, n, hex.EncodeToString(h.Sum(nil)), f.Bytes, f.SHA256)
	}
	return nil
}

func (bk *Backup) file(name string) *File {
	i := slices.IndexFunc(bk.Manifest.Files, func(f File) bool { return f.Name == name })
	if i < 0 {
		return nil
	}
	return &bk.Manifest.Files[i]
}

// Count is how many records (or, for AuditFile, messages) a file holds.
func (bk *Backup) Count(name string) int {
	if f := bk.file(name); f != nil {
		return f.Records
	}
	return 0
}

// Records calls fn with each record of bucket, in the backup's order. A
// bucket the backup lacks has none.
func (bk *Backup) Records(bucket string, fn func(Record) error) error {
	return bk.lines(BucketFile(bucket), func(line []byte) error {
		var r Record
		if err := json.Unmarshal(line, &r); err != nil || r.Key == "" {
			return fmt.Errorf("%w: %s: a record does not decode", ErrMalformed, BucketFile(bucket))
		}
		return fn(r)
	})
}

// Messages calls fn with each audit message in order; their sequences are
// consecutive.
func (bk *Backup) Messages(fn func(Message) error) error {
	var last uint64
	return bk.lines(AuditFile, func(line []byte) error {
		var m Message
		if err := json.Unmarshal(line, &m); err != nil || m.Msg == 0 {
			return fmt.Errorf("%w: %s: a message does not decode", ErrMalformed, AuditFile)
		}
		if last != 0 && m.Msg != last+1 {
			return fmt.Errorf("%w: audit message %d follows %d (messages were deleted from the stream before the backup)", ErrAuditChain, m.Msg, last)
		}
		last = m.Msg
		return fn(m)
	})
}

func (bk *Backup) lines(name string, fn func([]byte) error) error {
	if bk.file(name) == nil {
		return nil
	}
	f, err := os.Open(filepath.Join(bk.Dir, filepath.FromSlash(name)))
	if err != nil {
		return fmt.Errorf("backup %s: %w", name, err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), maxLine)
	for sc.Scan() {
		if err := fn(sc.Bytes()); err != nil {
			return err
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("%w: %s: %w", ErrMalformed, name, err)
	}
	return nil
}

// verifyChunk is how many events are verified at once: the trail is
// checked in pieces of whole messages, each following the last hash of the
// piece before, so that a large trail is never held in memory.
const verifyChunk = 10000

// VerifyAudit verifies the backup's audit trail with its audit key (as
// audit.VerifyKept does the stream: from event 1 when the backup holds the
// stream's first message, else from the oldest event kept). It returns the
// number of events.
func (bk *Backup) VerifyAudit() (int, error) {
	var (
		chunk [][]byte
		prev  string
		first = true
		total int
	)
	flush := func() error {
		if len(chunk) == 0 {
			return nil
		}
		if _, err := audit.VerifyChain(chunk, bk.Manifest.AuditKey, prev); err != nil {
			return fmt.Errorf("%w: %w", ErrAuditChain, err)
		}
		var last audit.Event
		_ = json.Unmarshal(chunk[len(chunk)-1], &last) // verified: it decodes
		prev, total, chunk = last.Hash, total+len(chunk), chunk[:0]
		return nil
	}
	err := bk.Messages(func(m Message) error {
		events := bytes.Split(m.Data, []byte{'\n'})
		if first && m.Msg > 1 {
			// The messages before it aged out: take its first event's
			// predecessor as given (audit.VerifyKept).
			var e audit.Event
			if err := json.Unmarshal(events[0], &e); err != nil {
				return fmt.Errorf("%w: the first event does not decode", ErrAuditChain)
			}
			prev = e.Prev
		}
		first = false
		chunk = append(chunk, events...)
		if len(chunk) >= verifyChunk {
			return flush()
		}
		return nil
	})
	if err != nil {
		return total, err
	}
	if err := flush(); err != nil {
		return total, err
	}
	return total, nil
}

// errStop ends an iteration early.
var errStop = errors.New("stop")

// FirstMessage is the stream sequence of the backup's first audit message
// (0: none).
func (bk *Backup) FirstMessage() (uint64, error) {
	var first uint64
	err := bk.Messages(func(m Message) error { first = m.Msg; return errStop })
	if err != nil && !errors.Is(err, errStop) {
		return 0, err
	}
	return first, nil
}
