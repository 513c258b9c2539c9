package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tpmauthn/tpmauthn/verifier"
)

// ScaleResult is the verifier's footprint with n credentials in KV: a
// verifier process of its own (tpmauthn-bench verifier-child) against a
// nats-server holding the fleet.
type ScaleResult struct {
	Credentials int     `json:"credentials"`
	Hosts       int     `json:"hosts"`
	StartS      float64 `json:"start_s"`         // exec to ready (keys, KV, host watch loaded)
	RSSStartMB  float64 `json:"rss_start_mb"`    // after start
	RSSWarmMB   float64 `json:"rss_warm_mb"`     // after every credential connected once
	HeapWarmMB  float64 `json:"heap_warm_mb"`    // Go heap in use then
	WarmS       float64 `json:"warm_connects_s"` // time to connect every credential once
	WarmFailed  int     `json:"warm_connects_failed"`
	// Audit events recorded but not yet appended when RSSWarmMB was read.
	AuditBacklog int `json:"audit_backlog"`
}

// VerifierChildArg is the subcommand that runs a verifier for Scale.
const VerifierChildArg = "verifier-child"

// workloadsPerHost shapes the fleet of a scale run.
const workloadsPerHost = 10

// Scale measures start-up and memory with n credentials.
func Scale(dir string, n int) (*ScaleResult, error) {
	exe, ok := benchExe()
	if !ok {
		return nil, errors.New("scale: the verifier runs as a process of its own: run it from tpmauthn-bench")
	}
	ss, k, policy, err := startTpmauthnServer(dir, "127.0.0.1:-1", "")
	if err != nil {
		return nil, err
	}
	defer ss.srv.Shutdown()
	// A first verifier creates the buckets, as at a fleet's first start.
	v, err := verifier.New(verifier.Config{DataDir: filepath.Join(dir, "verifier"), NATSURL: ss.srv.ClientURL(), PolicyFile: policy, RPID: benchRPID, Logger: quietLog()})
	if err == nil {
		err = v.Start(context.Background())
		v.Close()
	}
	if err != nil {
		return nil, err
	}
	creds, err := writeFleet(ss.srv.ClientURL(), k, n, workloadsPerHost)
	if err != nil {
		return nil, err
	}
	res := &ScaleResult{Credentials: n, Hosts: (n + workloadsPerHost - 1) / workloadsPerHost}
	start := time.Now()
	_, in, sc, stop, err := startChild(exe, VerifierChildArg, ss.srv.ClientURL(), filepath.Join(dir, "verifier"), policy)
	if err != nil {
		return nil, err
	}
	defer stop()
	ask := func(q string) (rss, heap float64, backlog int, err error) {
		if _, err := io.WriteString(in, q+"\n"); err != nil {
			return 0, 0, 0, err
		}
		if !sc.Scan() {
			return 0, 0, 0, fmt.Errorf("verifier child: no answer to %q (see stderr)", q)
		}
		if _, err := fmt.Sscanf(sc.Text(), "rss %f heap %f audit-backlog %d", &rss, &heap, &backlog); err != nil {
			return 0, 0, 0, fmt.Errorf("verifier child: %q", sc.Text())
		}
		return rss / 1024, heap / (1 << 20), backlog, nil
	}
	if !sc.Scan() || sc.Text() != "ready" {
		return nil, fmt.Errorf("verifier child did not start: %q", sc.Text())
	}
	res.StartS = time.Since(start).Seconds()
	if res.RSSStartMB, _, _, err = ask("rss"); err != nil {
		return nil, err
	}
	warm := time.Now()
	res.WarmFailed = connectEach(ss.srv.ClientURL(), creds, 64)
	res.WarmS = time.Since(warm).Seconds()
	if res.RSSWarmMB, res.HeapWarmMB, res.AuditBacklog, err = ask("rss"); err != nil {
		return nil, err
	}
	return res, nil
}

// connectEach connects (and closes) every credential once, c at a time, and
// returns the failures.
func connectEach(url string, creds []*softCred, c int) int {
	var failed atomic.Int64
	var wg sync.WaitGroup
	next := make(chan *softCred)
	for range c {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for cr := range next {
				nc, err := nats.Connect(url, nats.MaxReconnects(0), nats.Timeout(10*time.Second), cr.nkey())
				if err != nil {
					failed.Add(1)
					continue
				}
				nc.Close()
			}
		}()
	}
	for _, cr := range creds {
		next <- cr
	}
	close(next)
	wg.Wait()
	return int(failed.Load())
}

// VerifierChildMain runs a verifier against URL with the keys in DIR and
// answers "rss" on stdin with its resident and Go heap memory.
func VerifierChildMain(args []string) error {
	if len(args) != 3 {
		return errors.New("usage: verifier-child URL DIR POLICY")
	}
	v, err := verifier.New(verifier.Config{DataDir: args[1], NATSURL: args[0], PolicyFile: args[2], RPID: benchRPID, Logger: quietLog()})
	if err != nil {
		return err
	}
	if err := v.Start(context.Background()); err != nil {
		return err
	}
	defer v.Close()
	fmt.Println("ready")
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		if f := os.Getenv("BENCH_HEAPPROFILE"); f != "" {
			if w, err := os.Create(f); err == nil {
				_ = pprof.WriteHeapProfile(w)
				_ = w.Close()
			}
		}
		fmt.Printf("rss %d heap %d audit-backlog %d\n", rssKB(), ms.HeapAlloc, v.AuditBacklog())
	}
	return nil
}

// rssKB is this process's resident set in KiB.
func rssKB() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return -1
	}
	for _, l := range strings.Split(string(b), "\n") {
		var kb int64
		if _, err := fmt.Sscanf(l, "VmRSS: %d kB", &kb); err == nil {
			return kb
		}
	}
	return -1
}
