// Package backup is the on-disk form of a fleet's backup, which
// tpmauthnctl writes and a fresh verifier imports (verifier/restore): the
// shared key files (keys.Shared), the records of every durable KV bucket,
// the audit stream's messages as stored, and a manifest with each file's
// size, record count and SHA-256.
//
// Layout of a backup directory (0700; every file 0600, since the key files
// are the fleet's secrets and the records name every host):
//
//	manifest.json
//	keys/<file>             the key files, byte for byte
//	kv/<bucket>.jsonl       {"key":K,"value":base64 of the stored bytes}
//	audit.jsonl             {"msg":N,"data":base64 of the stored message}
//
// Values and messages are kept as stored: audit messages are hash-chained
// and signed, so a re-encoding would break them. The manifest's hashes
// detect a damaged or edited copy; they are not a signature (whoever can
// edit a backup holds its keys), and the audit trail verifies by itself.
//
// The open enrollments and registration challenges are not backed up: they
// live five minutes, and a restored one would live longer than it should.
package backup

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"time"
)

// Format is the manifest's format version this package writes and reads.
const Format = 1

// Names in a backup directory.
const (
	ManifestFile = "manifest.json"
	KeysDir      = "keys"
	KVDir        = "kv"
	AuditFile    = "audit.jsonl"
)

// Buckets are the KV buckets a backup holds, in the order they are read
// and restored (verifier/store's durable buckets; verifier/restore checks
// that the two lists agree).
var Buckets = []string{
	"tpmauthn_hosts", "tpmauthn_credentials", "tpmauthn_tokens",
	"tpmauthn_eks", "tpmauthn_ek_allow", "tpmauthn_workloads", "tpmauthn_people",
}

// Manifest describes a backup.
type Manifest struct {
	Format  int       `json:"format"`
	Created time.Time `json:"created"`
	// AuditKey is the public key that signs the audit trail (the issuer
	// key among the key files).
	AuditKey string `json:"audit_key"`
	Files    []File `json:"files"`
}

// File is one file of a backup.
type File struct {
	Name    string `json:"name"` // slash-separated, relative to the backup directory
	Bytes   int64  `json:"bytes"`
	SHA256  string `json:"sha256"`
	Records int    `json:"records"` // lines (records or messages); 0 for a key file
}

// BucketFile is a bucket's file in a backup.
func BucketFile(bucket string) string { return KVDir + "/" + bucket + ".jsonl" }

// Record is a KV record line.
type Record struct {
	Key   string `json:"key"`
	Value []byte `json:"value"`
}

// Message is an audit stream message line.
type Message struct {
	Msg  uint64 `json:"msg"`
	Data []byte `json:"data"`
}

// Writer writes a backup directory.
type Writer struct {
	dir string
	m   Manifest
}

// Create starts a backup in dir, which must not exist or be empty; it is
// created 0700.
func Create(dir string, auditKey string) (*Writer, error) {
	entries, err := os.ReadDir(dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return nil, fmt.Errorf("backup directory: %w", err)
	case len(entries) > 0:
		return nil, fmt.Errorf("%w: %s (choose a new directory: a backup is never written over another)", ErrNotEmpty, dir)
	}
	for _, d := range []string{dir, filepath.Join(dir, KeysDir), filepath.Join(dir, KVDir)} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("backup directory: %w", err)
		}
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return nil, fmt.Errorf("backup directory: %w", err)
	}
	return &Writer{dir: dir, m: Manifest{Format: Format, Created: time.Now().UTC(), AuditKey: auditKey}}, nil
}

// CopyKey copies a key file into the backup.
func (w *Writer) CopyKey(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("key file: %w", err)
	}
	f, err := w.File(KeysDir + "/" + filepath.Base(path))
	if err != nil {
		return err
	}
	if _, err := f.w.Write(b); err != nil {
		f.abort()
		return fmt.Errorf("backup %s: %w", f.name, err)
	}
	return f.close(0)
}

// FileWriter writes one file of lines, hashing what it writes.
type FileWriter struct {
	wr    *Writer
	name  string
	f     *os.File
	buf   *bufio.Writer
	h     hash.Hash
	w     io.Writer // buf and h
	n     int64
	lines int
}

// File creates the backup file name (slash-separated).
func (w *Writer) File(name string) (*FileWriter, error) {
	f, err := os.OpenFile(filepath.Join(w.dir, filepath.FromSlash(name)), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("backup file: %w", err)
	}
	fw := &FileWriter{wr: w, name: name, f: f, buf: bufio.NewWriterSize(f, 1<<20), h: sha256.New()}
	fw.w = io.MultiWriter(fw.buf, fw.h, (*counter)(&fw.n))
	return fw, nil
}

type counter int64

func (c *counter) Write(p []byte) (int, error) { *c += counter(len(p)); return len(p), nil }

// Line writes v as one JSON line.
func (fw *FileWriter) Line(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if _, err := fw.w.Write(append(b, '\n')); err != nil {
		return fmt.Errorf("backup %s: %w", fw.name, err)
	}
	fw.lines++
	return nil
}

// Close syncs the file and enters it in the manifest.
func (fw *FileWriter) Close() error { return fw.close(fw.lines) }

func (fw *FileWriter) close(records int) error {
	err := fw.buf.Flush()
	if err == nil {
		err = fw.f.Sync()
	}
	if cerr := fw.f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("backup %s: %w", fw.name, err)
	}
	fw.wr.m.Files = append(fw.wr.m.Files, File{Name: fw.name, Bytes: fw.n, SHA256: hex.EncodeToString(fw.h.Sum(nil)), Records: records})
	return nil
}

func (fw *FileWriter) abort() { _ = fw.f.Close() }

// Finish writes the manifest, last: a backup without one is incomplete.
func (w *Writer) Finish() (*Manifest, error) {
	b, err := json.MarshalIndent(&w.m, "", "  ")
	if err != nil {
		return nil, err
	}
	if err := writeFile(filepath.Join(w.dir, ManifestFile), append(b, '\n')); err != nil {
		return nil, err
	}
	return &w.m, nil
}

// writeFile writes a new file 0600 and syncs it.
func writeFile(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		_ = f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		_ = f.Close()
		return err
	}
	return f.Close()
}
