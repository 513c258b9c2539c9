package auditlog

import (
	"github.com/tpmauthn/tpmauthn/internal/atomicfile"

	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tpmauthn/tpmauthn/audit"
)

// Checkpoints (threat model M3). The writer signs where the chain ended
// (audit.Checkpoint) every Config.WatchEvery and at a clean shutdown, and
// keeps it in Config.CheckpointFile, in the verifier's data directory: out
// of reach of whoever administers the NATS servers but not the verifier's
// host. At start, and at each watch, the stream must reach that head and
// hold that event there; otherwise the stream was cut, or deleted and
// re-created from an older prefix, and the writer raises an alert
// (AlertTruncated, AlertRewritten) that is also audited, as the first event
// after the cut. The chain then continues from the stream's head: the
// verifier cannot restore what was removed, and refusing to start would
// hand whoever cut the trail a denial of service as well.
//
// What it does not protect against: whoever controls the verifier's host
// (its data directory holds both the checkpoint and the issuer key) can
// rewrite the trail and the checkpoint together, and one compromised
// verifier instance can sign any chain after the last checkpoint another
// party kept. Checkpoints kept where the verifier cannot write are the
// answer to that: tpmauthnctl keeps the head it last verified
// (`audit verify`), and an auditor may keep exports.

// Alert kinds the writer raises (tpmauthn.alerts.<kind>).
const (
	AlertTruncated         = "audit_truncated"          // the stream is behind a checkpoint
	AlertRewritten         = "audit_rewritten"          // the stream differs from a checkpoint
	AlertCheckpointInvalid = "audit_checkpoint_invalid" // the checkpoint file does not verify
	AlertNearLimit         = "audit_stream_near_limit"  // the stream is past Config.NearLimit of its max bytes
	AlertAppendFailing     = "audit_append_failing"     // appends fail (full stream, JetStream away)
)

// readCheckpoint loads and verifies the checkpoint file; ok is false when
// there is none.
func (a *Log) readCheckpoint() (cp audit.Checkpoint, ok bool, err error) {
	b, err := os.ReadFile(a.cfg.CheckpointFile)
	if errors.Is(err, fs.ErrNotExist) {
		return cp, false, nil
	}
	if err != nil {
		return cp, false, fmt.Errorf("audit checkpoint: %w", err)
	}
	if err := json.Unmarshal(b, &cp); err != nil {
		return cp, true, fmt.Errorf("%w: %s does not decode: %w", audit.ErrBadCheckpoint, a.cfg.CheckpointFile, err)
	}
	if err := cp.Verify(a.pub); err != nil {
		return cp, true, fmt.Errorf("%s: %w", a.cfg.CheckpointFile, err)
	}
	return cp, true, nil
}

// writeCheckpoint signs cp and replaces the checkpoint file with it
// (atomically: a crash leaves the old one or the new one).
func (a *Log) writeCheckpoint(cp audit.Checkpoint) error {
	cp.Time = time.Now().UTC()
	if err := cp.Sign(a.key); err != nil {
		return err
	}
	b, err := json.Marshal(&cp)
	if err != nil {
		return err
	}
	if err := atomicfile.Write(a.cfg.CheckpointFile, b, 0o600); err != nil {
		return fmt.Errorf("audit checkpoint: %w", err)
	}
	a.watch.setWritten(cp)
	return nil
}

// loadCheckpoint reads the last checkpoint this verifier wrote, before the
// stream's head is read (when every event aged out, only it knows the
// head). One that does not verify is an alert, and is not used.
func (a *Log) loadCheckpoint() (audit.Checkpoint, bool) {
	if a.cfg.CheckpointFile == "" {
		return audit.Checkpoint{}, false
	}
	cp, ok, err := a.readCheckpoint()
	switch {
	case err != nil && errors.Is(err, audit.ErrBadCheckpoint):
		a.noteInvalidCheckpoint(err)
		return cp, false
	case err != nil:
		a.log.Error("audit checkpoint unreadable: the stream is not compared with it", "error", err)
		return cp, false
	case !ok:
		a.log.Info("no audit checkpoint yet: the stream's head is taken as it is", "file", a.cfg.CheckpointFile)
		return cp, false
	}
	a.watch.setWritten(cp)
	return cp, true
}

// compareAtStart compares the stream with the last checkpoint: after a
// crash or a restart, the chain must not restart silently from a cut.
func (a *Log) compareAtStart(ctx context.Context, cp audit.Checkpoint) {
	if err := a.compare(ctx, cp); err != nil {
		a.noteTamper(cp, err)
	}
}

// compare reads the stream's head and the event cp names, and checks them
// against cp (audit.CheckHead). An error that is not tampering (JetStream
// away) is returned unwrapped, and only logged by the callers.
func (a *Log) compare(ctx context.Context, cp audit.Checkpoint) error {
	info, err := a.stream.Info(ctx)
	if err != nil {
		return fmt.Errorf("audit stream: %w", err)
	}
	st := info.State
	switch {
	case st.LastSeq < cp.Msg:
		// A stream's message numbers never go back, limits or not: this
		// one was deleted and re-created.
		return fmt.Errorf("%w: the stream's last message is %d, behind a checkpoint at %s: it was deleted and re-created",
			audit.ErrTruncated, st.LastSeq, cp)
	case st.Msgs == 0:
		return nil // every message aged out: nothing to compare
	}
	var head audit.Head
	if st.LastSeq > 0 {
		last, err := a.eventsOf(ctx, st.LastSeq)
		if err != nil {
			return err
		}
		if len(last) > 0 {
			head = audit.Head{Seq: last[len(last)-1].Seq, Hash: last[len(last)-1].Hash}
		}
	}
	at := ""
	if cp.Msg >= st.FirstSeq && cp.Msg <= st.LastSeq && head.Seq >= cp.Seq {
		// The message is within what the stream keeps: it must hold the
		// event the checkpoint names.
		at = "(absent)"
		evs, err := a.eventsOf(ctx, cp.Msg)
		if err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
			return err
		}
		for _, e := range evs {
			if e.Seq == cp.Seq {
				at = e.Hash
			}
		}
	}
	return audit.CheckHead(head, at, cp)
}

// eventsOf decodes the events of one stream message.
func (a *Log) eventsOf(ctx context.Context, seq uint64) ([]audit.Event, error) {
	m, err := a.stream.GetMsg(ctx, seq)
	if err != nil {
		return nil, fmt.Errorf("audit stream: message %d: %w", seq, err)
	}
	var out []audit.Event
	for _, line := range bytes.Split(m.Data, []byte{'\n'}) {
		var e audit.Event
		if json.Unmarshal(line, &e) == nil {
			out = append(out, e)
		}
	}
	return out, nil
}

// Checkpoint is the last checkpoint written (or read at start), signed;
// ok is false when there is none.
func (a *Log) Checkpoint() (cp audit.Checkpoint, ok bool) {
	if a == nil {
		return cp, false
	}
	return a.watch.lastWritten()
}
