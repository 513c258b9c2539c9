package auditlog

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tpmauthn/tpmauthn/audit"
)

// alerts collects what the writer raises.
type alerts struct {
	mu    sync.Mutex
	kinds []string
	evs   []audit.Event
}

func (a *alerts) Alert(kind string, e audit.Event) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.kinds, a.evs = append(a.kinds, kind), append(a.evs, e)
}

func (a *alerts) got() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]string(nil), a.kinds...)
}

// record appends n events through the writer.
func record(t *testing.T, a *Log, n int) {
	t.Helper()
	for range n {
		a.Record(audit.Event{Kind: "connect", Result: audit.Allow})
		if !a.FlushWithin(5 * time.Second) {
			t.Fatal("append failed")
		}
	}
}

// After a restart, the stream is compared with the last checkpoint: behind
// it (cut, or re-created from a prefix) or different at its event is an
// alert; as far or further along is not; a checkpoint file that does not
// verify is an alert of its own.
func TestCheckpointAtStart(t *testing.T) {
	for _, tc := range []struct {
		name   string
		attack func(t *testing.T, e *env, file string)
		want   []string
	}{
		{"untouched", func(*testing.T, *env, string) {}, nil},
		{"recreatedFromPrefix", func(t *testing.T, e *env, _ string) { recreate(t, e, 2, "") }, []string{AlertTruncated}},
		{"recreatedAndWrittenOn", func(t *testing.T, e *env, _ string) { recreate(t, e, 2, "again") }, []string{AlertRewritten}},
		{"checkpointEdited", func(t *testing.T, _ *env, file string) {
			b, _ := os.ReadFile(file)
			if err := os.WriteFile(file, []byte(strings.Replace(string(b), `"seq":4`, `"seq":2`, 1)), 0o600); err != nil {
				t.Fatal(err)
			}
		}, []string{AlertCheckpointInvalid}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			file := filepath.Join(t.TempDir(), "cp.json")
			a, err := Open(t.Context(), e.js, e.key, Config{AllowDelete: true, CheckpointFile: file})
			if err != nil {
				t.Fatal(err)
			}
			record(t, a, 4)
			a.Close() // writes the checkpoint: event 4
			cp, ok := a.Checkpoint()
			if !ok || cp.Seq != 4 || cp.Verify(e.pub) != nil {
				t.Fatalf("checkpoint at close: %+v %v", cp, ok)
			}
			tc.attack(t, e, file)
			var al alerts
			b, err := Open(t.Context(), e.js, e.key, Config{AllowDelete: true, CheckpointFile: file, WatchEvery: time.Hour})
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			b.Watch(&al)
			if got := al.got(); strings.Join(got, ",") != strings.Join(tc.want, ",") {
				t.Fatalf("alerts %v, want %v", got, tc.want)
			}
		})
	}
}

// recreate deletes the stream and re-creates it with the first keep events
// of the old one, then, with salt, writes other events on from there.
func recreate(t *testing.T, e *env, keep int, salt string) {
	t.Helper()
	ctx := context.Background()
	s, err := e.js.Stream(ctx, Stream)
	if err != nil {
		t.Fatal(err)
	}
	var prefix [][]byte
	for seq := uint64(1); seq <= uint64(keep); seq++ {
		m, err := s.GetMsg(ctx, seq)
		if err != nil {
			t.Fatal(err)
		}
		prefix = append(prefix, m.Data)
	}
	cfg := s.CachedInfo().Config
	if err := e.js.DeleteStream(ctx, Stream); err != nil {
		t.Fatal(err)
	}
	if _, err := e.js.CreateStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	for _, d := range prefix {
		if _, err := e.js.Publish(ctx, Subject, d); err != nil {
			t.Fatal(err)
		}
	}
	if salt == "" {
		return
	}
	a, err := Open(ctx, e.js, e.key, Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	for range 4 {
		a.Record(audit.Event{Kind: "connect", Result: audit.DenyText, Reason: salt})
		a.Flush()
	}
}

// A stream whose max age dropped its oldest messages verifies from the
// oldest event kept, and a checkpoint that aged out is no alert.
func TestAgedOutPrefix(t *testing.T) {
	e := newEnv(t)
	ctx := t.Context()
	// Created by an administrator with a short max age; Open uses it as it is.
	if _, err := e.js.CreateStream(ctx, jetstream.StreamConfig{Name: Stream, Subjects: []string{Subject},
		Storage: jetstream.FileStorage, MaxAge: time.Second, Discard: jetstream.DiscardNew}); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "cp.json")
	a, err := Open(ctx, e.js, e.key, Config{CheckpointFile: file})
	if err != nil {
		t.Fatal(err)
	}
	record(t, a, 3)
	a.Close()
	time.Sleep(1500 * time.Millisecond)
	var al alerts
	b, err := Open(ctx, e.js, e.key, Config{CheckpointFile: file, WatchEvery: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	b.Watch(&al)
	record(t, b, 3)
	raws, err := b.ReadRaw(ctx, 1, 1000)
	if err != nil {
		t.Fatal(err)
	}
	if len(raws) == 0 || raws[0].Msg == 1 {
		t.Fatalf("the stream kept its first message: %+v", raws)
	}
	n, from, err := audit.VerifyKept(raws, e.pub)
	if err != nil || from != 4 || n != 3 {
		t.Fatalf("VerifyKept = %d from %d, %v; want 3 from 4", n, from, err)
	}
	if got := al.got(); len(got) != 0 {
		t.Fatalf("alerts for an aged-out prefix: %v", got)
	}
}

// Past NearLimit of max bytes, the watch raises one alert (not one a look).
func TestNearLimitAlert(t *testing.T) {
	e := newEnv(t)
	a, err := Open(t.Context(), e.js, e.key, Config{MaxBytes: 64 << 10, NearLimit: 0.5, WatchEvery: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	var al alerts
	a.Watch(&al)
	for range 60 { // ~700 bytes an event: past half of 64 KB
		a.Record(audit.Event{Kind: "connect", Result: audit.DenyText, Reason: strings.Repeat("x", 600)})
	}
	a.Flush()
	deadline := time.Now().Add(5 * time.Second)
	for len(al.got()) == 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond) // more looks
	if got := al.got(); len(got) != 1 || got[0] != AlertNearLimit {
		t.Fatalf("alerts %v, want one %s", got, AlertNearLimit)
	}
	if b, m := a.Usage(); m != 64<<10 || b < 32<<10 {
		t.Fatalf("usage %d of %d", b, m)
	}
}

// A full stream makes the trail unavailable at once (ErrUnavailable), and a
// Record on a full queue does not block while appends fail.
func TestFullStreamUnavailable(t *testing.T) {
	e := newEnv(t)
	a, err := Open(t.Context(), e.js, e.key, Config{MaxBytes: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	var al alerts
	a.Watch(&al)
	record(t, a, 1)
	if err := a.Unavailable(); err != nil {
		t.Fatalf("Unavailable on a healthy trail: %v", err)
	}
	cfg := a.stream.CachedInfo().Config
	cfg.MaxMsgs = 1
	if _, err := e.js.UpdateStream(t.Context(), cfg); err != nil {
		t.Fatal(err)
	}
	a.Record(audit.Event{Kind: "connect", Result: audit.Allow})
	deadline := time.Now().Add(5 * time.Second)
	for a.Unavailable() == nil && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if err := a.Unavailable(); !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "full") {
		t.Fatalf("Unavailable = %v, want ErrUnavailable saying the stream is full", err)
	}
	// Fill the queue: Record must return (dropping) rather than block.
	done := make(chan struct{})
	go func() {
		for range cap(a.ch) + 10 {
			a.Record(audit.Event{Kind: "connect", Result: audit.DenyText})
		}
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("Record blocks on a full queue while appends fail")
	}
	if a.Dropped() == 0 {
		t.Fatal("no event counted as dropped")
	}
	if got := al.got(); len(got) == 0 || got[0] != AlertAppendFailing {
		t.Fatalf("alerts %v, want %s", got, AlertAppendFailing)
	}
}
