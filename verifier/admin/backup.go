package admin

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/audit"
	"github.com/tpmauthn/tpmauthn/verifier/backup"
	"github.com/tpmauthn/tpmauthn/verifier/natsapi"
	"github.com/tpmauthn/tpmauthn/verifier/store"
)

// backupPageBytes bounds a backup page's data: base64 adds a third, and a
// reply must stay below NATS's 1 MiB payload limit. A page holds one audit
// message even if it is larger (the writer keeps them below 512 KiB).
const backupPageBytes = 512 << 10

// backupRead answers one page of a backup (tpmauthnctl backup): the
// records of a bucket as stored, or the audit stream's messages as stored.
// The first page of each part is audited ("backup"), and recorded before
// the part is read, so a backup's own events are in the trail it copies.
func (s *Service) backupRead(ctx context.Context, body []byte) (any, error) {
	var req api.BackupReadRequest
	if err := natsapi.Decode(body, &req); err != nil {
		return nil, err
	}
	if req.Bucket == "" {
		if req.From <= 1 {
			s.recordBackup(ctx, "the audit trail")
		}
		msgs, more, err := s.cfg.Trail.ReadMessages(ctx, req.From, backupPageBytes)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", api.ErrUnavailable, err)
		}
		page := &api.BackupPage{More: more, Messages: make([]api.BackupMessage, len(msgs))}
		for i, m := range msgs {
			page.Messages[i] = api.BackupMessage{Msg: m.Seq, Data: m.Data}
		}
		return page, nil
	}
	kv := s.bucket(req.Bucket)
	if kv == nil {
		return nil, fmt.Errorf("%w: bucket %q is not backed up (the buckets are %v)", api.ErrBadRequest, req.Bucket, backup.Buckets)
	}
	if req.After == "" {
		s.recordBackup(ctx, "bucket "+req.Bucket)
	}
	return readBucket(ctx, kv, req.After)
}

func (s *Service) recordBackup(ctx context.Context, what string) {
	s.log.Info("backup read", "part", what)
	s.cfg.Trail.RecordNow(ctx, by(ctx, audit.Event{Kind: "backup", Result: audit.OK, Reason: "read " + what}))
}

// bucket is the store's bucket of that name, if a backup holds it.
func (s *Service) bucket(name string) jetstream.KeyValue {
	if !slices.Contains(backup.Buckets, name) {
		return nil
	}
	for _, kv := range s.st.Durable() {
		if kv.Bucket() == name {
			return kv
		}
	}
	return nil
}

// readBucket reads the records with keys after after, in key order, up to
// backupPageBytes. Each page lists the keys again: buckets hold thousands
// of records, not millions.
func readBucket(ctx context.Context, kv jetstream.KeyValue, after string) (*api.BackupPage, error) {
	all, err := store.Keys(ctx, kv)
	if err != nil {
		return nil, err
	}
	keys := slices.DeleteFunc(all, func(k string) bool { return k <= after })
	slices.Sort(keys)
	page := &api.BackupPage{Records: []api.BackupRecord{}}
	size := 0
	for _, k := range keys {
		e, err := kv.Get(ctx, k)
		if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
			continue // deleted meanwhile
		}
		if err != nil {
			return nil, fmt.Errorf("%w: %s get %s: %w", api.ErrUnavailable, kv.Bucket(), k, err)
		}
		if len(page.Records) > 0 && size+len(e.Value()) > backupPageBytes {
			page.More = true
			return page, nil
		}
		page.Records = append(page.Records, api.BackupRecord{Key: k, Value: e.Value()})
		size += len(e.Value())
	}
	return page, nil
}
