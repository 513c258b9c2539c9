// Package restore imports a backup that tpmauthnctl restore staged in a
// verifier's data directory (verifier/backup): the verifier calls Import at
// start, after it opens the store and before it opens the audit trail and
// serves anything.
//
// What must not happen, and what stops it:
//   - a restore over a live fleet: the import runs only when every backed-up
//     bucket is empty and the audit stream does not exist (ErrLiveFleet);
//     tpmauthnctl restore refuses a data directory that holds keys or a
//     JetStream store before that.
//   - a tampered staging directory: every file is checked against the
//     manifest again, and the audit trail is verified with the fleet's key
//     before anything is written.
//   - a broken chain: audit messages are written byte for byte at their
//     original sequences, with expected-last-sequence.
//   - a partial import: the import is resumable. A marker in the staging
//     directory says it began; a verifier that stops half way resumes at its
//     next start (records and messages already written must be the
//     backup's), and the staging directory is removed only once all is in.
package restore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tpmauthn/tpmauthn/verifier/auditlog"
	"github.com/tpmauthn/tpmauthn/verifier/backup"
	"github.com/tpmauthn/tpmauthn/verifier/store"
)

// ErrLiveFleet: a restore is staged, but the store already holds a fleet
// (records, or an audit stream) and no import of this restore began.
var ErrLiveFleet = errors.New("a restore is staged but the fleet store is not empty")

// markerFile, in the staging directory, says the import began.
const markerFile = "importing"

// Config is what Import needs.
type Config struct {
	DataDir  string
	Store    *store.Store
	Audit    auditlog.Config // the audit stream's limits and replicas
	AuditKey string          // the verifier's issuer public key
	Logger   *slog.Logger
}

// Result is what an import wrote.
type Result struct {
	Records  int // KV records
	Messages int // audit stream messages
	Events   int // audit events in them
	Created  string
	Resumed  bool
}

// Import imports the restore staged in cfg.DataDir, if there is one (nil
// and no error if not), then removes the staging directory.
func Import(ctx context.Context, cfg Config) (*Result, error) {
	dir := backup.StagingDir(cfg.DataDir)
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	bk, err := backup.Open(dir)
	if err != nil {
		return nil, fmt.Errorf("staged restore in %s: %w", dir, err)
	}
	if bk.Manifest.AuditKey != cfg.AuditKey {
		return nil, fmt.Errorf("staged restore in %s: %w: its audit key is not this verifier's issuer key (were the key files replaced?)", dir, backup.ErrMalformed)
	}
	events, err := bk.VerifyAudit()
	if err != nil {
		return nil, fmt.Errorf("staged restore in %s: %w", dir, err)
	}
	res := &Result{Events: events, Created: bk.Manifest.Created.Format(time.RFC3339)}
	marker := filepath.Join(dir, markerFile)
	if _, err := os.Stat(marker); err == nil {
		res.Resumed = true
		log.Info("resuming the staged restore", "dir", dir)
	} else {
		if err := checkEmpty(ctx, cfg.Store); err != nil {
			return nil, fmt.Errorf("staged restore in %s: %w", dir, err)
		}
		if err := os.WriteFile(marker, nil, 0o600); err != nil {
			return nil, fmt.Errorf("staged restore: %w", err)
		}
	}
	if res.Records, err = importKV(ctx, cfg.Store, bk, log); err != nil {
		return nil, fmt.Errorf("staged restore in %s (start the verifier again to resume): %w", dir, err)
	}
	if res.Messages, err = importAudit(ctx, cfg, bk); err != nil {
		return nil, fmt.Errorf("staged restore in %s (start the verifier again to resume): %w", dir, err)
	}
	if err := os.RemoveAll(dir); err != nil {
		return nil, fmt.Errorf("staged restore imported; remove %s: %w", dir, err)
	}
	log.Info("restored the fleet from a backup", "records", res.Records, "audit_messages", res.Messages,
		"audit_events", res.Events, "backup_created", res.Created)
	return res, nil
}

// buckets are the store's buckets a backup holds, by name.
func buckets(st *store.Store) map[string]jetstream.KeyValue {
	m := map[string]jetstream.KeyValue{}
	for _, kv := range st.Durable() {
		m[kv.Bucket()] = kv
	}
	return m
}

func checkEmpty(ctx context.Context, st *store.Store) error {
	for name, kv := range buckets(st) {
		s, err := kv.Status(ctx)
		if err != nil {
			return fmt.Errorf("bucket %s: %w", name, err)
		}
		if s.Values() > 0 {
			return fmt.Errorf("%w: bucket %s holds %d values: restore into a fresh NATS (or remove the staged restore to start without it)", ErrLiveFleet, name, s.Values())
		}
	}
	exists, err := auditlog.StreamExists(ctx, st.JS)
	if err != nil {
		return err
	}
	if exists {
		return fmt.Errorf("%w: the audit stream %s exists: restore into a fresh NATS (or remove the staged restore to start without it)", ErrLiveFleet, auditlog.Stream)
	}
	return nil
}

// importKV creates each record; one that exists (a resumed import) must
// hold the backup's bytes.
func importKV(ctx context.Context, st *store.Store, bk *backup.Backup, log *slog.Logger) (int, error) {
	kvs := buckets(st)
	n := 0
	for _, name := range backup.Buckets {
		kv, ok := kvs[name]
		if !ok {
			return n, fmt.Errorf("bucket %s: the store has no such bucket", name)
		}
		err := bk.Records(name, func(r backup.Record) error {
			if _, err := kv.Create(ctx, r.Key, r.Value); err != nil {
				if !errors.Is(err, jetstream.ErrKeyExists) {
					return fmt.Errorf("%s create %s: %w", name, r.Key, err)
				}
				e, gerr := kv.Get(ctx, r.Key)
				if gerr != nil || !bytes.Equal(e.Value(), r.Value) {
					return fmt.Errorf("%w: %s/%s exists and differs from the backup", ErrLiveFleet, name, r.Key)
				}
			}
			n++
			return nil
		})
		if err != nil {
			return n, err
		}
		log.Info("restored bucket", "bucket", name, "records", bk.Count(backup.BucketFile(name)))
	}
	return n, nil
}

func importAudit(ctx context.Context, cfg Config, bk *backup.Backup) (int, error) {
	first, err := bk.FirstMessage()
	if err != nil || first == 0 {
		return 0, err
	}
	r, err := auditlog.NewRestorer(ctx, cfg.Store.JS, cfg.Audit, first)
	if err != nil {
		return 0, err
	}
	n := 0
	err = bk.Messages(func(m backup.Message) error {
		n++
		return r.Put(ctx, m.Msg, m.Data)
	})
	return n, err
}
