package main

import (
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/internal/atomicfile"
	"github.com/tpmauthn/tpmauthn/internal/cliconf"
	"github.com/tpmauthn/tpmauthn/verifier/keys"
	"github.com/tpmauthn/tpmauthn/verifier/record"
)

func flagsOf(keys []cliconf.Key) *pflag.FlagSet {
	c := &cobra.Command{}
	cliconf.Define(c, keys)
	fs := c.Flags()
	fs.Lookup("config").Hidden = true
	return fs
}

func (a *app) tokenCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "token", Short: "Join tokens: one-time, expiring, carrying roles"}
	var roles, tags []string
	var ttl time.Duration
	var out string
	create := &cobra.Command{
		Use:   "create",
		Short: "Create a join token and print it (only its hash is kept)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var r api.TokenCreateResponse
			if err := a.call("token.create", api.TokenCreateRequest{Roles: roles, Tags: tags, TTL: ttl}, &r); err != nil {
				return err
			}
			if out != "" {
				// A bearer secret: readable by its owner only, which the
				// agent checks before it reads it.
				if err := atomicfile.Write(out, []byte(r.Token+"\n"), 0o600); err != nil {
					return fmt.Errorf("token %s created, but not written: %w", r.ID, err)
				}
				fmt.Fprintf(cmd.ErrOrStderr(), "token written to %s (mode 0600)\n", out)
			}
			if a.s.JSON {
				return a.print(r, nil)
			}
			if out == "" {
				fmt.Fprintln(a.out, r.Token)
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "token %s for roles %s, valid until %s, one use\n", r.ID, list(roles), when(r.Expires))
			if r.CAPin == "" {
				fmt.Fprintln(cmd.ErrOrStderr(), "the token pins no NATS CA (the verifier has none of its own): give agents --nats-ca, or they trust the system's roots")
			}
			return nil
		},
	}
	create.Flags().StringSliceVar(&roles, "roles", nil, "roles the enrolled host gets, comma-separated")
	create.Flags().StringSliceVar(&tags, "tags", nil, "tags the enrolled host gets")
	create.Flags().DurationVar(&ttl, "ttl", time.Hour, "how long the token stays valid (at most 720h)")
	create.Flags().StringVar(&out, "out", "", "write the token to this file, mode 0600 (the agent's --token-file), instead of printing it")
	listCmd := &cobra.Command{
		Use: "list", Short: "List join tokens", Args: cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			var ts []record.Token
			if err := a.call("token.list", nil, &ts); err != nil {
				return err
			}
			now := time.Now()
			return a.print(ts, func(w *tabwriter.Writer) {
				fmt.Fprintln(w, "ID\tSTATE\tROLES\tEXPIRES\tUSED BY")
				for _, t := range ts {
					row(w, t.ID, t.State(now), list(t.Roles), when(t.Expires), orDash(t.UsedBy))
				}
			})
		},
	}
	var reason string
	revoke := &cobra.Command{
		Use: "revoke ID", Short: "Revoke an unused join token (ID as token list shows it)", Args: cobra.ExactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			var t record.Token
			if err := a.call("token.revoke", api.IDRequest{ID: args[0], Reason: reason}, &t); err != nil {
				return err
			}
			return a.print(t, func(w *tabwriter.Writer) { fmt.Fprintf(w, "token %s is %s\n", t.ID, t.State(time.Now())) })
		},
	}
	revoke.Flags().StringVar(&reason, "reason", "", "why (recorded)")
	cmd.AddCommand(create, listCmd, revoke)
	return cmd
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func (a *app) hostCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "host", Short: "Enrolled hosts"}
	cmd.AddCommand(&cobra.Command{
		Use: "list", Short: "List hosts", Args: cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			var hs []record.Host
			if err := a.call("host.list", nil, &hs); err != nil {
				return err
			}
			return a.print(hs, func(w *tabwriter.Writer) {
				fmt.Fprintln(w, "ID\tHOSTNAME\tSTATUS\tROLES\tTPM\tENROLLED\tVIA")
				for _, h := range hs {
					row(w, h.ID, h.Hostname, h.Status, list(h.Roles), h.TPM.Manufacturer, when(h.Created), h.Via)
				}
			})
		},
	}, a.hostShowCmd(), a.hostActionCmd("approve", "Approve a pending host: its AK certificate is issued"),
		a.hostActionCmd("revoke", "Revoke a host and every credential of it; live connections are kicked"),
		a.hostActionCmd("offboard", "Offboard a host: revoke its credentials (kicking live connections) and forget its EK enrollment"))
	return cmd
}

func (a *app) hostShowCmd() *cobra.Command {
	return &cobra.Command{
		Use: "show ID", Short: "Show one host", Args: cobra.ExactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			var h record.Host
			if err := a.call("host.show", api.IDRequest{ID: args[0]}, &h); err != nil {
				return err
			}
			return a.print(h, func(w *tabwriter.Writer) {
				for _, kv := range [][2]string{
					{"id", h.ID}, {"hostname", h.Hostname}, {"status", string(h.Status)}, {"reason", orDash(h.Reason)},
					{"roles", list(h.Roles)}, {"tags", list(h.Tags)}, {"ek sha256", h.EKHash},
					{"tpm", fmt.Sprintf("%s %s %s", h.TPM.Manufacturer, h.TPM.Model, h.TPM.Version)},
					{"via", h.Via}, {"enrolled", when(h.Created)}, {"updated", when(h.Updated)}, {"approved by", orDash(h.ApprovedBy)},
				} {
					row(w, kv[0]+":", kv[1])
				}
			})
		},
	}
}

func (a *app) hostActionCmd(op, short string) *cobra.Command {
	var reason string
	cmd := &cobra.Command{
		Use: op + " ID", Short: short, Args: cobra.ExactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			var h record.Host
			if err := a.call("host."+op, api.IDRequest{ID: args[0], Reason: reason}, &h); err != nil {
				return err
			}
			return a.print(h, func(w *tabwriter.Writer) { fmt.Fprintf(w, "host %s is %s\n", h.ID, h.Status) })
		},
	}
	if op != "approve" {
		cmd.Flags().StringVar(&reason, "reason", "", "why (recorded)")
	}
	return cmd
}

func (a *app) credentialCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "credential", Aliases: []string{"cred"}, Short: "Registered workload credentials"}
	var host string
	listCmd := &cobra.Command{
		Use: "list", Short: "List credentials", Args: cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			var cs []record.Credential
			if err := a.call("credential.list", api.CredentialListRequest{Host: host}, &cs); err != nil {
				return err
			}
			return a.print(cs, func(w *tabwriter.Writer) { credentialTable(w, cs) })
		},
	}
	listCmd.Flags().StringVar(&host, "host", "", "only this host's credentials")
	show := &cobra.Command{
		Use: "show ID", Short: "Show one credential", Args: cobra.ExactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			var c record.Credential
			if err := a.call("credential.show", api.IDRequest{ID: args[0]}, &c); err != nil {
				return err
			}
			return a.print(c, func(w *tabwriter.Writer) { credentialFields(w, &c) })
		},
	}
	var reason string
	revoke := &cobra.Command{
		Use: "revoke ID", Short: "Revoke a credential: its next connect is denied", Args: cobra.ExactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			var c record.Credential
			if err := a.call("credential.revoke", api.IDRequest{ID: args[0], Reason: reason}, &c); err != nil {
				return err
			}
			return a.print(c, func(w *tabwriter.Writer) { fmt.Fprintf(w, "credential %s is %s\n", c.ID, c.Status) })
		},
	}
	revoke.Flags().StringVar(&reason, "reason", "", "why (recorded)")
	release := &cobra.Command{
		Use: "release ID", Short: "Lift a quarantine after review", Args: cobra.ExactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			var c record.Credential
			if err := a.call("credential.release", api.IDRequest{ID: args[0], Reason: reason}, &c); err != nil {
				return err
			}
			return a.print(c, func(w *tabwriter.Writer) { fmt.Fprintf(w, "credential %s is %s\n", c.ID, c.Status) })
		},
	}
	release.Flags().StringVar(&reason, "reason", "", "why (recorded)")
	rotate := &cobra.Command{
		Use: "rotate ID", Short: "Ask the credential's agent to rotate it now (workloads do not notice)", Args: cobra.ExactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			var c record.Credential
			if err := a.call("credential.rotate", api.IDRequest{ID: args[0], Reason: reason}, &c); err != nil {
				return err
			}
			fmt.Fprintf(a.out, "rotation of %s requested: its agent is told now (an agent that is offline rotates at its next check)\n", c.ID)
			return nil
		},
	}
	rotate.Flags().StringVar(&reason, "reason", "", "why (recorded)")
	reissue := &cobra.Command{
		Use: "reissue ID|HOST/WORKLOAD",
		Short: "Let a host register a new credential for a workload whose credential is revoked " +
			"(the revoked one stays revoked; the agent registers the new one at its next check)",
		Args: cobra.ExactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			var r api.ReissueResponse
			if err := a.call("credential.reissue", api.IDRequest{ID: args[0], Reason: reason}, &r); err != nil {
				if strings.HasSuffix(err.Error(), "("+api.CodeBadRequest+")") {
					return fmt.Errorf("%w: a reissue needs the workload's current credential, revoked: 'tpmauthnctl credential revoke ID' first, "+
						"and see 'tpmauthnctl credential list --host HOST'", err)
				}
				return err
			}
			return a.print(r, func(w *tabwriter.Writer) {
				fmt.Fprintf(w, "host %s may register a new credential for workload %s (%s stays revoked): its agent does so at its next check\n",
					r.Host, r.Workload, r.Revoked)
			})
		},
	}
	reissue.Flags().StringVar(&reason, "reason", "", "why (recorded)")
	cmd.AddCommand(listCmd, show, revoke, release, rotate, reissue)
	return cmd
}

// credentialTable is credential list's table. A rotation chain's
// credentials share a LINEAGE (the ID of its first, the CONNECT nkey its
// workload keeps); a replaced one names its successor and is refused after
// RETIRES.
func credentialTable(w io.Writer, cs []record.Credential) {
	fmt.Fprintln(w, "ID\tWORKLOAD\tHOST\tSTATUS\tCOUNTER\tCREATED\tLINEAGE\tREPLACED BY\tRETIRES")
	for _, c := range cs {
		row(w, c.ID, c.Workload, orDash(c.Host), c.Status, c.Counter, when(c.Created), c.Nkey(), orDash(c.ReplacedBy), when(c.Retires))
	}
}

// credentialFields is credential show's list of fields.
func credentialFields(w io.Writer, c *record.Credential) {
	rotate := "-"
	if c.RotateRequested {
		rotate = "requested"
	}
	for _, kv := range [][2]string{{"id", c.ID}, {"workload", c.Workload}, {"host", orDash(c.Host)}, {"status", string(c.Status)},
		{"reason", orDash(c.Reason)}, {"counter", fmt.Sprint(c.Counter)}, {"created", when(c.Created)}, {"updated", when(c.Updated)},
		{"lineage", c.Nkey()}, {"rotation", rotate}, {"replaced by", orDash(c.ReplacedBy)}, {"retires", when(c.Retires)}} {
		row(w, kv[0]+":", kv[1])
	}
}

func (a *app) ekCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "ek", Short: "The EK allow-list: enroll TPMs without a join token or EK certificate"}
	var roles, tags []string
	var note string
	allow := &cobra.Command{
		Use: "allow EK_SHA256", Short: "Allow the TPM whose EK public key (PKIX DER) hashes to EK_SHA256", Args: cobra.ExactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			if err := a.call("ek.allow", api.EKAllowRequest{EKHash: args[0], Roles: roles, Tags: tags, Note: note}, nil); err != nil {
				return err
			}
			fmt.Fprintf(a.out, "EK %s allowed with roles %s\n", args[0], list(roles))
			return nil
		},
	}
	allow.Flags().StringSliceVar(&roles, "roles", nil, "roles the host gets")
	allow.Flags().StringSliceVar(&tags, "tags", nil, "tags the host gets")
	allow.Flags().StringVar(&note, "note", "", "a note for operators")
	disallow := &cobra.Command{
		Use: "disallow EK_SHA256", Short: "Remove an EK from the allow-list (an enrollment spends its entry anyway)", Args: cobra.ExactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			if err := a.call("ek.disallow", api.EKAllowRequest{EKHash: args[0], Note: note}, nil); err != nil {
				return err
			}
			fmt.Fprintf(a.out, "EK %s removed from the allow-list\n", args[0])
			return nil
		},
	}
	disallow.Flags().StringVar(&note, "note", "", "why (recorded)")
	cmd.AddCommand(allow, disallow)
	return cmd
}

func (a *app) statusCmd() *cobra.Command {
	return &cobra.Command{
		Use: "status", Short: "Summarize the fleet and the verifier", Args: cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			var s api.Status
			if err := a.call("status", nil, &s); err != nil {
				return err
			}
			return a.print(s, func(w *tabwriter.Writer) {
				fmt.Fprintf(w, "verifier:\t%s (rp_id %s, origin %s)\n", s.Version, s.RPID, s.Origin)
				fmt.Fprintf(w, "approval:\t%s\n", s.Approval)
				fmt.Fprintf(w, "EK roots:\t%d\n", s.EKRoots)
				fmt.Fprintf(w, "hosts:\t%s\n", counts(s.Hosts))
				fmt.Fprintf(w, "credentials:\t%s\n", counts(s.Credentials))
				fmt.Fprintf(w, "tokens:\t%s\n", counts(s.Tokens))
				for _, h := range s.Streams {
					fmt.Fprintf(w, "stream %s:\t%s\n", esc(h.Stream), streamLine(h))
				}
			})
		},
	}
}

func (a *app) natsConfigCmd() *cobra.Command {
	var ws keys.Websocket
	var merge string
	cmd := &cobra.Command{
		Use:   "nats-config",
		Short: "Print the nats-server configuration for an existing cluster, or merge it into a server's file",
		Long: `Prints the accounts and authorization blocks to add to every nats-server of an
existing cluster (nats-server >= 2.15.3, with server-level JetStream). The keys
are read from --data-dir (created there on first use), so start
tpmauthn-verifier with that data directory and --nats-url pointing at the
cluster.

With --merge FILE, it prints FILE (an existing nats-server configuration) with
tpmauthn's accounts added to its accounts block, the verifier's system user to
its system account, and the auth callout appended; what it kept and what
changes go to stderr. The file's accounts and their users log in as before;
every other client (an anonymous one, above all) goes through the callout,
which lets in only tpmauthn's hosts, workloads and people. It refuses a file
without server-level JetStream, with an authorization block of its own (whose
users the callout would refuse), or in operator (JWT) mode, saying what to do.

With --websocket-listen, it adds the WebSocket listener browsers connect to (the
console's pages and the browser client): only --websocket-origin (the
verifier's --http-public-url) may connect, with the longer auth timeout a
passkey prompt needs; add a tls block to it beyond loopback.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if a.s.DataDir == "" {
				return fmt.Errorf("--data-dir is required: the verifier's keys live there")
			}
			k, _, err := keys.LoadOrCreate(a.s.DataDir)
			if err != nil {
				return err
			}
			if ws.Listen != "" && len(ws.AllowedOrigins) == 0 {
				return fmt.Errorf("--websocket-listen needs --websocket-origin: the verifier's --http-public-url, the only page allowed to connect")
			}
			if merge == "" {
				fmt.Fprint(a.out, keys.ServerConfig(k, keys.ServerConfigOptions{Websocket: ws}))
				return nil
			}
			m, err := keys.MergeServerConfig(k, merge, ws)
			if err != nil {
				return err
			}
			fmt.Fprint(a.out, m.Config)
			for _, n := range m.Notes {
				fmt.Fprintln(cmd.ErrOrStderr(), "nats-config:", n)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&merge, "merge", "", "print this nats-server configuration file with tpmauthn's accounts and auth callout merged in")
	cmd.Flags().StringVar(&ws.Listen, "websocket-listen", "", "add a WebSocket listener for browsers on host:port")
	cmd.Flags().StringSliceVar(&ws.AllowedOrigins, "websocket-origin", nil, "the origin allowed to connect over WebSocket (the verifier's --http-public-url)")
	return cmd
}

// counts renders {"active": 3, "pending": 1} as "3 active, 1 pending".
func counts(m map[string]int) string {
	if len(m) == 0 {
		return "none"
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%d %s", m[k], k)
	}
	return strings.Join(parts, ", ")
}

// streamLine is one stream's replication: replicas, leader, each follower.
func streamLine(h api.StreamHealth) string {
	if h.Error != "" {
		return "ERROR " + esc(h.Error)
	}
	line := fmt.Sprintf("R%d, %d events, %d bytes", h.Replicas, h.Messages, h.Bytes)
	if h.Leader == "" {
		return line
	}
	line += ", leader " + esc(h.Leader)
	for _, p := range h.Peers {
		line += fmt.Sprintf(", %s %s", esc(p.Name), p.State)
		if p.State == "lagging" {
			line += fmt.Sprintf(" (%d behind, heard %v ago)", p.Lag, p.Active.Round(time.Millisecond))
		}
	}
	return line
}
