package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/audit"
)

// readAudit pages through the audit stream from stream message from.
func (a *app) readAudit(from uint64) ([]audit.RawEvent, error) {
	var all []audit.RawEvent
	for {
		var page []audit.RawEvent
		if err := a.call("audit.read", api.AuditReadRequest{From: from, Max: 1000}, &page); err != nil {
			return nil, err
		}
		if len(page) == 0 {
			return all, nil
		}
		all = append(all, page...)
		from = page[len(page)-1].Msg + 1 // pages hold whole messages
	}
}

func (a *app) auditCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "audit", Short: "The audit trail: every enrollment, registration, connect decision, revocation and alert"}
	cmd.AddCommand(a.auditTailCmd(), a.auditExportCmd(), a.auditVerifyCmd())
	return cmd
}

func (a *app) auditTailCmd() *cobra.Command {
	var n int
	var follow bool
	var host string
	var since time.Duration
	cmd := &cobra.Command{
		Use: "tail", Short: "Show the latest events", Args: cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			var next uint64 = 1
			first := true
			for {
				raws, err := a.readAudit(next)
				if err != nil {
					return err
				}
				var evs []audit.Event
				for _, r := range raws {
					next = r.Msg + 1
					var e audit.Event
					if r.Missing || json.Unmarshal(r.Data, &e) != nil {
						continue
					}
					if (host == "" || e.Host == host) && (since == 0 || time.Since(e.Time) <= since) {
						evs = append(evs, e)
					}
				}
				if first && len(evs) > n {
					evs = evs[len(evs)-n:]
				}
				if err := a.printEvents(evs, first); err != nil {
					return err
				}
				first = false
				if !follow {
					return nil
				}
				time.Sleep(time.Second)
			}
		},
	}
	cmd.Flags().IntVarP(&n, "lines", "n", 20, "how many events")
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing new events")
	cmd.Flags().StringVar(&host, "host", "", "only this host's events")
	cmd.Flags().DurationVar(&since, "since", 0, "only events this recent (e.g. 1h)")
	return cmd
}

func (a *app) printEvents(evs []audit.Event, header bool) error {
	if a.s.JSON {
		enc := json.NewEncoder(a.out)
		for _, e := range evs {
			if err := enc.Encode(e); err != nil {
				return err
			}
		}
		return nil
	}
	w := tabwriter.NewWriter(a.out, 2, 4, 2, ' ', 0)
	if header {
		fmt.Fprintln(w, "SEQ\tTIME\tKIND\tRESULT\tHOST\tWORKLOAD\tCREDENTIAL\tREASON")
	}
	for _, e := range evs {
		row(w, e.Seq, e.Time.Local().Format("15:04:05.000"), e.Kind, e.Result,
			orDash(e.Host), orDash(e.Workload), orDash(e.Credential), orDash(reason(&e)))
	}
	return w.Flush()
}

func (a *app) auditExportCmd() *cobra.Command {
	return &cobra.Command{
		Use: "export", Short: "Print every event as JSON lines, exactly as stored (for archives and audit verify --file)", Args: cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			raws, err := a.readAudit(1)
			if err != nil {
				return err
			}
			for _, r := range raws {
				if r.Missing {
					return fmt.Errorf("stream message %d was deleted: run audit verify", r.Msg)
				}
				fmt.Fprintf(a.out, "%s\n", r.Data)
			}
			return nil
		},
	}
}

func (a *app) auditVerifyCmd() *cobra.Command {
	var file, key, witness string
	cmd := &cobra.Command{
		Use:   "verify",
		Short: "Prove the audit chain intact, or name the first broken event",
		Long: `Checks that every event follows the one before (hash chain), hashes to what
it says and is signed by the verifier's key; a deleted, edited, removed or
reordered event is named. Reads the stream, or an export with --file.

Reading the stream, it also checks that the trail has not gone back: its head
must not be behind, and must hold the same event as, the verifier's last
signed checkpoint and the head this command verified last time (the witness
file, kept on the operator's machine where the verifier cannot rewrite it).
A stream deleted and re-created from an older prefix is reported as
TRUNCATED or REWRITTEN. Events that aged out of the stream under its limits
are not tampering: the chain is then verified from the oldest event kept.`,
		Args: cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			var st api.Status
			if key == "" || file == "" {
				if err := a.call("status", nil, &st); err != nil {
					if key == "" {
						return fmt.Errorf("%w (or give the verifier's audit key with --key)", err)
					}
				}
			}
			if key == "" {
				key = st.AuditKey
			}
			if file != "" {
				return a.verifyExport(file, key)
			}
			return a.verifyStream(key, &st, witness)
		},
	}
	cmd.Flags().StringVar(&file, "file", "", "verify an export (JSON lines) instead of the stream")
	cmd.Flags().StringVar(&key, "key", "", "the verifier's audit key (default: ask the verifier)")
	cmd.Flags().StringVar(&witness, "witness", "", "the file that keeps the head verified last (default: tpmauthn/audit-witness-KEY.json in the user's config directory; \"none\": keep none)")
	return cmd
}

// brokenChain says where a chain breaks.
func brokenChain(err error, n int) error {
	var ce *audit.ChainError
	if errors.As(err, &ce) {
		return fmt.Errorf("audit chain BROKEN at event %d: %s (%d events before it verified)", ce.Seq, ce.Reason, n)
	}
	return err
}

func (a *app) verifyExport(file, key string) error {
	lines, err := readLines(file)
	if err != nil {
		return err
	}
	if len(lines) == 0 {
		return fmt.Errorf("%s holds no events: export them with tpmauthnctl audit export > FILE", file)
	}
	n, err := audit.VerifyChain(lines, key, "")
	if err != nil {
		return brokenChain(err, n)
	}
	fmt.Fprintf(a.out, "audit chain intact: %d events, signed by %s\n", n, key)
	return nil
}

// verifyStream verifies the stream's chain from the oldest event it keeps,
// then checks it against the verifier's checkpoint and the witness, and
// moves the witness to the head it verified.
func (a *app) verifyStream(key string, st *api.Status, witness string) error {
	raws, err := a.readAudit(1)
	if err != nil {
		return err
	}
	n, from, err := audit.VerifyKept(raws, key)
	if err != nil {
		return brokenChain(err, n)
	}
	if len(st.AuditCheckpoint) > 0 {
		var cp audit.Checkpoint
		if err := json.Unmarshal(st.AuditCheckpoint, &cp); err != nil {
			return fmt.Errorf("the verifier's audit checkpoint does not decode: %w", err)
		}
		if err := cp.Verify(key); err != nil {
			return fmt.Errorf("the verifier's audit checkpoint: %w", err)
		}
		if err := audit.CheckRaw(raws, cp); err != nil {
			return tampered(err, "the verifier's checkpoint")
		}
	}
	w, err := a.witnessFile(witness, key)
	if err != nil {
		return err
	}
	seen, err := readWitness(w)
	if err != nil {
		return err
	}
	if seen != nil {
		if err := audit.CheckRaw(raws, *seen); err != nil {
			return tampered(err, "the head this command verified before ("+w+")")
		}
	}
	head := headOf(raws)
	if w != "" && head.Seq > 0 && (seen == nil || seen.Before(head)) {
		if err := writeWitness(w, head); err != nil {
			return fmt.Errorf("audit chain intact, but the witness was not kept: %w", err)
		}
	}
	switch {
	case n == 0:
		fmt.Fprintf(a.out, "audit trail empty, signed by %s\n", key)
	case from > 1:
		fmt.Fprintf(a.out, "audit chain intact: %d events (%d to %d; the ones before aged out of the stream), signed by %s\n", n, from, head.Seq, key)
	default:
		fmt.Fprintf(a.out, "audit chain intact: %d events, signed by %s\n", n, key)
	}
	return nil
}

// tampered says how a trail disagrees with a checkpoint, and what to do.
func tampered(err error, whose string) error {
	what := "TRUNCATED"
	if errors.Is(err, audit.ErrRewritten) {
		what = "REWRITTEN"
	}
	return fmt.Errorf("audit trail %s: it disagrees with %s: %w. Keep the witness file and any exports as evidence, "+
		"and look for who deleted or re-created the %s stream", what, whose, err, audit.StreamName)
}

// headOf is the last event of what was read, as a checkpoint.
func headOf(raws []audit.RawEvent) audit.Checkpoint {
	for i := len(raws) - 1; i >= 0; i-- {
		var e audit.Event
		if raws[i].Missing || json.Unmarshal(raws[i].Data, &e) != nil {
			continue
		}
		return audit.Checkpoint{Msg: raws[i].Msg, Seq: e.Seq, Hash: e.Hash, Time: e.Time}
	}
	return audit.Checkpoint{}
}

func readLines(path string) ([][]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out [][]byte
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if len(sc.Bytes()) > 0 {
			out = append(out, append([]byte(nil), sc.Bytes()...))
		}
	}
	return out, sc.Err()
}

// reason is an event's reason, with what a session did for the end of one.
func reason(e *audit.Event) string {
	st := e.Session
	if st == nil {
		return e.Reason
	}
	return fmt.Sprintf("%s; lasted %s, sent %d msgs (%d B), received %d msgs (%d B)", e.Reason,
		e.Time.Sub(st.Start).Round(time.Millisecond), st.MsgsSent, st.BytesSent, st.MsgsReceived, st.BytesReceived)
}
