package main

import (
	"errors"
	"fmt"
	"io"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/verifier/backup"
	"github.com/tpmauthn/tpmauthn/verifier/keys"
)

func (a *app) backupCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "backup DIR",
		Short: "Back up the fleet into a new directory: the shared key files, the KV records and the audit trail",
		Long: `Writes DIR (created 0700; it must not exist or be empty): the shared key
files from --data-dir, every durable KV bucket's records and the audit
stream's messages as stored, read through the operator API, and a manifest
with each file's SHA-256. DIR holds the fleet's secrets: keep it as you keep
the key files. The records and the trail are read one after the other, not
as one snapshot; the trail is read last, so it covers every record.

Restore with 'tpmauthnctl --data-dir NEW restore DIR' on a fresh data
directory, then start a verifier there.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.backup(args[0], cmd.ErrOrStderr())
		},
	}
}

func (a *app) backup(dir string, progress io.Writer) error {
	if a.s.DataDir == "" {
		return errors.New("backup needs --data-dir: the key files are copied from a verifier's data directory")
	}
	issuer, err := keys.LoadNKey(filepath.Join(a.s.DataDir, keys.IssuerFile))
	if err != nil {
		return fmt.Errorf("issuer key: %w", err)
	}
	w, err := backup.Create(dir, keys.Public(issuer))
	if err != nil {
		return err
	}
	for _, k := range keys.Shared {
		if err := w.CopyKey(filepath.Join(a.s.DataDir, k)); err != nil {
			return err
		}
	}
	fmt.Fprintf(progress, "backup: %d key files\n", len(keys.Shared))
	for _, b := range backup.Buckets {
		n, err := a.backupBucket(w, b)
		if err != nil {
			return err
		}
		fmt.Fprintf(progress, "backup: bucket %s: %d records\n", b, n)
	}
	msgs, err := a.backupAudit(w, progress)
	if err != nil {
		return err
	}
	if _, err := w.Finish(); err != nil {
		return err
	}
	fmt.Fprintf(progress, "backup: audit trail: %d messages; written to %s\n", msgs, dir)
	return nil
}

func (a *app) backupBucket(w *backup.Writer, bucket string) (int, error) {
	f, err := w.File(backup.BucketFile(bucket))
	if err != nil {
		return 0, err
	}
	n, after := 0, ""
	for {
		var page api.BackupPage
		if err := a.call("backup.read", api.BackupReadRequest{Bucket: bucket, After: after}, &page); err != nil {
			return n, err
		}
		for _, r := range page.Records {
			if err := f.Line(backup.Record{Key: r.Key, Value: r.Value}); err != nil {
				return n, err
			}
			after = r.Key
			n++
		}
		if !page.More || len(page.Records) == 0 {
			return n, f.Close()
		}
	}
}

// backupAudit copies the audit stream's messages in order; a message
// deleted from the stream fails the backup (its trail would not verify).
func (a *app) backupAudit(w *backup.Writer, progress io.Writer) (int, error) {
	f, err := w.File(backup.AuditFile)
	if err != nil {
		return 0, err
	}
	var n int
	var from, last uint64
	for {
		var page api.BackupPage
		if err := a.call("backup.read", api.BackupReadRequest{From: from}, &page); err != nil {
			return n, err
		}
		for _, m := range page.Messages {
			if last != 0 && m.Msg != last+1 {
				return n, fmt.Errorf("audit stream message %d was deleted: the trail would not verify; run 'tpmauthnctl audit verify'", last+1)
			}
			if err := f.Line(backup.Message{Msg: m.Msg, Data: m.Data}); err != nil {
				return n, err
			}
			last, from = m.Msg, m.Msg+1
			n++
			if n%10000 == 0 {
				fmt.Fprintf(progress, "backup: audit trail: %d messages\n", n)
			}
		}
		if !page.More || len(page.Messages) == 0 {
			return n, f.Close()
		}
	}
}

func (a *app) restoreCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "restore DIR",
		Short: "Stage a backup in a new verifier's data directory (--data-dir); the verifier imports it when it starts",
		Long: `Checks DIR against its manifest and verifies its audit trail, then writes the
key files into --data-dir and stages the records and the trail in
--data-dir/restore. The data directory must hold no fleet: no key files, no
JetStream store. Start tpmauthn-verifier on it (with a fresh NATS): it
imports the staged restore before it serves, provided the fleet store is
empty and the audit stream does not exist, and serves the same fleet.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if a.s.DataDir == "" {
				return errors.New("restore needs --data-dir: the new verifier's data directory")
			}
			bk, err := backup.Open(args[0])
			if err != nil {
				return err
			}
			events, err := bk.VerifyAudit()
			if err != nil {
				return err
			}
			if err := backup.Stage(bk, a.s.DataDir); err != nil {
				return err
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "restore: staged in %s (%d audit events verified); start tpmauthn-verifier with --data-dir %s to import it\n",
				backup.StagingDir(a.s.DataDir), events, a.s.DataDir)
			return nil
		},
	}
}
