package auditlog

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/tpmauthn/tpmauthn/audit"
)

// BenchmarkAuditAppend measures one audit event appended (chain, hash, sign,
// publish with expected-last-sequence, ack) against a plain JetStream
// publish with ack to the same server, measured in the same run.
func BenchmarkAuditAppend(b *testing.B) {
	e := newEnv(b)
	a := e.open(b)
	ctx := context.Background()
	if _, err := e.js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{Name: "BASELINE", Subjects: []string{"baseline"}, Storage: jetstream.FileStorage}); err != nil {
		b.Fatal(err)
	}
	ev := audit.Event{Time: time.Now().UTC(), Kind: "connect", Result: "allow", Host: "h-0123456789abcdef", Workload: "billing",
		Credential: "EJqBLIdaVvEAS4zZETP1Sw", Counter: 42, Server: "NBG53HNJOYGTD3K7JULUNZNVDAKIAMB3XGFV6JUP5PBC3YOWIJZISBNA", Client: 7, ClientAddr: "127.0.0.1", Roles: []string{"demo"}}
	payload := make([]byte, 600) // about an event's size
	b.Run("JetStreamPublish", func(b *testing.B) {
		for b.Loop() {
			if _, err := e.js.Publish(ctx, "baseline", payload); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("AuditAppend", func(b *testing.B) {
		for b.Loop() {
			if err := a.Append(ev); err != nil {
				b.Fatal(err)
			}
		}
	})
	// Under load events are queued faster than one round trip each and go
	// eight or more to a message, with one signature.
	b.Run("AuditAppendBatchOf8", func(b *testing.B) {
		batch := make([]audit.Event, 8)
		for b.Loop() {
			for i := range batch {
				batch[i] = ev
			}
			if err := a.AppendBatch(batch); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(batch))/1e3, "µs/event")
	})
}
