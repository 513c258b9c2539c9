package verifier

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
)

// BenchmarkAuditAppend measures one audit event appended (chain, hash, sign,
// publish with expected-last-sequence, ack) against a plain JetStream
// publish with ack to the same server, measured in the same run.
func BenchmarkAuditAppend(b *testing.B) {
	v := startLocal(b)
	ctx := context.Background()
	if _, err := v.st.js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{Name: "BASELINE", Subjects: []string{"baseline"}, Storage: jetstream.FileStorage}); err != nil {
		b.Fatal(err)
	}
	ev := Event{Time: time.Now().UTC(), Kind: "connect", Result: "allow", Host: "h-0123456789abcdef", Workload: "billing",
		Credential: "EJqBLIdaVvEAS4zZETP1Sw", Counter: 42, Server: "NBG53HNJOYGTD3K7JULUNZNVDAKIAMB3XGFV6JUP5PBC3YOWIJZISBNA", Client: 7, ClientAddr: "127.0.0.1", Roles: []string{"demo"}}
	payload := make([]byte, 600) // about an event's size
	b.Run("JetStreamPublish", func(b *testing.B) {
		for b.Loop() {
			if _, err := v.st.js.Publish(ctx, "baseline", payload); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("AuditAppend", func(b *testing.B) {
		for b.Loop() {
			if err := v.audit.append(ev); err != nil {
				b.Fatal(err)
			}
		}
	})
	// Under load events are queued faster than one round trip each and go
	// eight or more to a message, with one signature.
	b.Run("AuditAppendBatchOf8", func(b *testing.B) {
		batch := make([]Event, 8)
		for b.Loop() {
			for i := range batch {
				batch[i] = ev
			}
			if err := v.audit.appendBatch(batch); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(batch))/1e3, "µs/event")
	})
}

// BenchmarkCounterWrite measures what a connect's one KV write (the
// compare-and-set of counter and sessions) costs in CPU, server and client
// in this process together, against a core NATS request-reply of the same
// size measured in the same run: 16 writers on distinct keys, a record-sized
// value, a bucket like the credentials bucket (file storage, history 1).
// It reports process CPU µs per operation.
func BenchmarkCounterWrite(b *testing.B) {
	v := startLocal(b)
	ctx := context.Background()
	kv, err := v.st.js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "bench_cas", History: 1, Storage: jetstream.FileStorage})
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
	sub, err := v.nc.Subscribe("bench.echo", func(m *nats.Msg) { _ = m.Respond(m.Data) })
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
			_, err := v.nc.Request("bench.echo", val, 5*time.Second)
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
