package auditlog

import (
	"bytes"
	"context"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"
)

// StreamExists reports whether the audit stream exists.
func StreamExists(ctx context.Context, js jetstream.JetStream) (bool, error) {
	_, err := js.Stream(ctx, Stream)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("audit stream: %w", err)
	}
	return true, nil
}

// Restorer writes a backup's messages into the audit stream, byte for
// byte and each at its original sequence, so that the chain, the
// checkpoints and witnesses that name messages, and audit.VerifyKept's view
// of an aged-out prefix all stay as they were.
type Restorer struct {
	js   jetstream.JetStream
	s    jetstream.Stream
	last uint64 // the stream's last sequence
}

// NewRestorer creates the audit stream (with cfg's limits, as Open does)
// so that its first message is sequence first, or, resuming a restore,
// opens the one a previous attempt created.
func NewRestorer(ctx context.Context, js jetstream.JetStream, cfg Config, first uint64) (*Restorer, error) {
	cfg.setDefaults()
	s, err := js.Stream(ctx, Stream)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		want := streamConfig(cfg)
		if first > 1 {
			want.FirstSeq = first
		}
		s, err = js.CreateStream(ctx, want)
	}
	if err != nil {
		return nil, fmt.Errorf("audit stream: %w", err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		return nil, fmt.Errorf("audit stream: %w", err)
	}
	return &Restorer{js: js, s: s, last: info.State.LastSeq}, nil
}

// Put writes message seq. A message the stream already holds (a restore
// resumed) must be the same bytes; a new one is appended with
// expected-last-sequence seq-1, so that it lands at seq or not at all.
func (r *Restorer) Put(ctx context.Context, seq uint64, data []byte) error {
	if seq <= r.last {
		m, err := r.s.GetMsg(ctx, seq)
		if err != nil {
			return fmt.Errorf("audit stream: message %d: %w", seq, err)
		}
		if !bytes.Equal(m.Data, data) {
			return fmt.Errorf("audit stream: message %d differs from the backup's", seq)
		}
		return nil
	}
	ack, err := r.js.Publish(ctx, Subject, data, jetstream.WithExpectLastSequence(seq-1))
	if err != nil {
		return fmt.Errorf("audit stream: restore message %d (if the stream is full, raise audit.max_bytes): %w", seq, err)
	}
	if ack.Sequence != seq {
		return fmt.Errorf("audit stream: message %d landed at %d", seq, ack.Sequence)
	}
	r.last = seq
	return nil
}
