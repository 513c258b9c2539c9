package e2e

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tpmauthn/tpmauthn/agent"
	"github.com/tpmauthn/tpmauthn/agent/client"
	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/attestation"
	"github.com/tpmauthn/tpmauthn/internal/fleettest"
)

// percentiles returns p50 and p99 in milliseconds.
func percentiles(d []time.Duration) (float64, float64) {
	slices.Sort(d)
	ms := func(x time.Duration) float64 { return float64(x) / float64(time.Millisecond) }
	return ms(d[len(d)/2]), ms(d[(len(d)*99)/100])
}

// BenchmarkChain measures, in one run on one swtpm: TPM2_Sign alone (the
// baseline), a signature through the agent's socket, and a whole NATS
// connect (socket, TPM, auth callout, verifier decision); and the verifier's
// own time per callout decision. It reports p50 and p99 of each, and the
// socket's overhead beyond the TPM.
func BenchmarkChain(b *testing.B) {
	var mu sync.Mutex
	var decisions []time.Duration
	f := fleettest.New(b, func(f *fleettest.Fleet) {
		f.Config.OnDecision = func(d time.Duration, err error) {
			mu.Lock()
			decisions = append(decisions, d)
			mu.Unlock()
		}
	})
	h := f.NewHost(b)
	n := max(b.N, 200)
	who, err := client.New(h.Socket).WhoAmI(b.Context())
	if err != nil {
		b.Fatal(err)
	}
	auth := h.Agent.Authenticator()
	id, _ := attestation.DecodeB64URL(who.CredentialID)
	cred, err := auth.Credential(id)
	if err != nil {
		b.Fatal(err)
	}
	tp := auth.TPM()
	digest := sha256.Sum256([]byte("x"))
	measure := func(f func(i int)) []time.Duration {
		out := make([]time.Duration, n)
		for i := range n {
			start := time.Now()
			f(i)
			out[i] = time.Since(start)
		}
		return out
	}
	cmdsBefore := tp.Commands()
	sign := measure(func(int) {
		if _, err := tp.Sign(&cred.Key, digest[:]); err != nil {
			b.Fatal(err)
		}
	})
	cmdsSign := float64(tp.Commands()-cmdsBefore) / float64(n)

	hc := unixHTTP(h.Socket)
	cmdsBefore = tp.Commands()
	socket := measure(func(i int) {
		resp, err := hc.Post("http://agent/v1/nats/sign", "application/json", bytes.NewReader(fmt.Appendf(nil, `{"nonce":"n%d"}`, i)))
		if err != nil || resp.StatusCode != http.StatusOK {
			b.Fatalf("sign: %v %v", resp, err)
		}
		resp.Body.Close()
	})
	cmdsSocket := float64(tp.Commands()-cmdsBefore) / float64(n)

	opts := h.NATSOptions(b)
	mu.Lock()
	decisions = decisions[:0]
	mu.Unlock()
	cmdsBefore = tp.Commands()
	connect := measure(func(int) {
		nc, err := nats.Connect(f.URL(), append(opts, nats.MaxReconnects(0))...)
		if err != nil {
			b.Fatal(err)
		}
		nc.Close()
	})

	cmdsConnect := float64(tp.Commands()-cmdsBefore) / float64(n)

	sp50, sp99 := percentiles(sign)
	kp50, kp99 := percentiles(socket)
	cp50, cp99 := percentiles(connect)
	mu.Lock()
	dp50, dp99 := percentiles(decisions)
	mu.Unlock()
	b.ReportMetric(sp50, "tpm-sign-p50-ms")
	b.ReportMetric(sp99, "tpm-sign-p99-ms")
	b.ReportMetric(kp50-sp50, "socket-overhead-p50-ms")
	b.ReportMetric(kp99-sp99, "socket-overhead-p99-ms")
	b.ReportMetric(cp50, "connect-p50-ms")
	b.ReportMetric(cp99, "connect-p99-ms")
	b.ReportMetric(dp50*1000, "decision-p50-us")
	b.ReportMetric(dp99*1000, "decision-p99-us")
	b.ReportMetric(cmdsSign, "tpm-cmds/sign")
	b.ReportMetric(cmdsSocket, "tpm-cmds/assertion")
	b.ReportMetric(cmdsConnect, "tpm-cmds/connect")
	b.ReportMetric(cp50-sp50, "chain-overhead-p50-ms")
	b.ReportMetric(cp99-sp99, "chain-overhead-p99-ms")
	writeBenchResult(b, "chain", map[string]float64{
		"connects": float64(n), "tpm_sign_p50_ms": sp50, "tpm_sign_p99_ms": sp99,
		"connect_p50_ms": cp50, "connect_p99_ms": cp99,
		"chain_overhead_p50_ms": cp50 - sp50, "chain_overhead_p99_ms": cp99 - sp99,
		"socket_overhead_p50_ms": kp50 - sp50, "socket_overhead_p99_ms": kp99 - sp99,
		"decision_p50_us": dp50 * 1000, "decision_p99_us": dp99 * 1000,
		"tpm_commands_per_connect": cmdsConnect, "tpm_commands_per_assertion": cmdsSocket,
	})
	b.Logf("n=%d  TPM2_Sign p50 %.2f p99 %.2f ms | socket sign p50 %.2f p99 %.2f ms | connect p50 %.2f p99 %.2f ms | decision p50 %.0f p99 %.0f us",
		n, sp50, sp99, kp50, kp99, cp50, cp99, dp50*1000, dp99*1000)
}

// BenchmarkRevokeToDisconnect revokes live credentials one at a time (at
// least 20) and reports, for each, the time from sending the revoke to the
// client seeing its connection closed, and that time relative to the
// command's reply (negative: the connection was gone before the reply).
func BenchmarkRevokeToDisconnect(b *testing.B) {
	const n = 24
	var ws []agent.Workload
	for i := range n {
		ws = append(ws, fleettest.UIDWorkload(fmt.Sprintf("w%02d", i), uint32(20000+i)))
	}
	f := fleettest.New(b)
	h := f.NewHost(b, fleettest.Workloads(ws...))
	auth := h.Agent.Authenticator()
	creds, err := auth.Credentials()
	if err != nil {
		b.Fatal(err)
	}
	var fromSend, fromReply []time.Duration
	for _, c := range creds {
		if c.Name == "tpmauthn-agent" {
			continue
		}
		closed := make(chan time.Time, 1)
		nc, err := nats.Connect(f.URL(), append(credentialOptions(auth, c.ID), nats.NoReconnect(),
			nats.ClosedHandler(func(*nats.Conn) { closed <- time.Now() }))...)
		if err != nil {
			b.Fatal(err)
		}
		sent := time.Now()
		f.MustAdmin(b, "credential.revoke", api.IDRequest{ID: c.IDString(), Reason: "bench"}, nil)
		replied := time.Now()
		select {
		case at := <-closed:
			fromSend = append(fromSend, at.Sub(sent))
			fromReply = append(fromReply, at.Sub(replied))
		case <-time.After(5 * time.Second):
			b.Fatal("connection not dropped within 5s")
		}
		nc.Close()
	}
	p50, p99 := percentiles(fromSend)
	r50, r99 := percentiles(fromReply)
	b.ReportMetric(p50, "revoke-to-drop-p50-ms")
	b.ReportMetric(p99, "revoke-to-drop-p99-ms")
	b.ReportMetric(r50, "reply-to-drop-p50-ms")
	b.ReportMetric(r99, "reply-to-drop-p99-ms")
	writeBenchResult(b, "revoke", map[string]float64{
		"revocations": float64(len(fromSend)), "kick_p50_ms": p50, "kick_p99_ms": p99,
		"reply_to_drop_p50_ms": r50, "reply_to_drop_p99_ms": r99,
	})
	b.Logf("%d revocations: send->drop p50 %.2f p99 %.2f ms; reply->drop p50 %.2f p99 %.2f ms", len(fromSend), p50, p99, r50, r99)
}

// writeBenchResult leaves a benchmark's numbers in $BENCH_RESULTS_DIR/e2e-<name>.json
// for tpmauthn-bench, which merges them into its report (make bench).
func writeBenchResult(b *testing.B, name string, m map[string]float64) {
	dir := os.Getenv("BENCH_RESULTS_DIR")
	if dir == "" {
		return
	}
	js, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "e2e-"+name+".json"), js, 0o644); err != nil {
		b.Fatal(err)
	}
}
