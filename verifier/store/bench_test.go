package store

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/tpmauthn/tpmauthn/internal/jstest"
)

// BenchmarkCounterWrite measures what a connect's one KV write (the
// compare-and-set of counter and sessions) costs in CPU, server and client
// in this process together, against a core NATS request-reply of the same
// size measured in the same run: 16 writers on distinct keys, a record-sized
// value, a bucket like the credentials bucket (file storage, history 1).
// It reports process CPU µs per operation.
func BenchmarkCounterWrite(b *testing.B) {
	v := jstest.Start(b)
	ctx := context.Background()
	kv, err := v.JS.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "bench_cas", History: 1, Storage: jetstream.FileStorage})
	if err != nil {
		b.Fatal(err)
	}
	const writers = 16
	val := make([]byte, 500)
	revs := make([]uint64, writers)
	for w := range writers {
		if revs[w], err = kv.Put(ctx, fmt.Sprintf("k%d", w), val); err != nil {
			b.Fatal(err)
		}
	}
	sub, err := v.NC.Subscribe("bench.echo", func(m *nats.Msg) { _ = m.Respond(m.Data) })
	if err != nil {
		b.Fatal(err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	run := func(b *testing.B, op func(w int) error) {
		var next atomic.Int64
		c0 := processCPU()
		b.ResetTimer()
		var wg sync.WaitGroup
		errs := make(chan error, writers)
		for w := range writers {
			wg.Go(func() {
				for next.Add(1) <= int64(b.N) {
					if err := op(w); err != nil {
						errs <- err
						return
					}
				}
			})
		}
		wg.Wait()
		b.StopTimer()
		close(errs)
		for err := range errs {
			b.Fatal(err)
		}
		b.ReportMetric(float64((processCPU()-c0).Microseconds())/float64(b.N), "cpu-µs/op")
	}
	b.Run("CoreRequest", func(b *testing.B) {
		run(b, func(int) error {
			_, err := v.NC.Request("bench.echo", val, 5*time.Second)
			return err
		})
	})
	cas := func(w int) error {
		rev, err := kv.Update(ctx, fmt.Sprintf("k%d", w), val, revs[w])
		revs[w] = rev
		return err
	}
	b.Run("KVCompareAndSet", func(b *testing.B) { run(b, cas) })
	// Every verifier instance watches the credentials bucket (revocations):
	// each write is also delivered to each instance.
	b.Run("KVCompareAndSetWatched", func(b *testing.B) {
		w, err := kv.WatchAll(ctx, jetstream.UpdatesOnly())
		if err != nil {
			b.Fatal(err)
		}
		defer func() { _ = w.Stop() }()
		go func() {
			for range w.Updates() {
			}
		}()
		run(b, cas)
	})
}

// processCPU is the user and system CPU time this process has used.
func processCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
