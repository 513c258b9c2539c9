package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
	"github.com/spf13/cobra"

	"github.com/tpmauthn/tpmauthn/agent/client"
	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/internal/buildinfo"
	"github.com/tpmauthn/tpmauthn/internal/cliconf"
	"github.com/tpmauthn/tpmauthn/internal/clidocs"
	"github.com/tpmauthn/tpmauthn/internal/natstls"
	"github.com/tpmauthn/tpmauthn/verifier/keys"
)

var globalKeys = []cliconf.Key{
	cliconf.K("data_dir", "data-dir", "", "a local verifier's data directory: holds its client URL and the operator credential"),
	cliconf.K("nats.url", "nats-url", "", "NATS URL (default: the one recorded in --data-dir)"),
	cliconf.K("nats.creds", "creds", "", "operator nkey seed file (default DATA_DIR/operator.nk)"),
	cliconf.K("nats.ca", "nats-ca", "", "PEM bundle to verify the NATS server with (default: the one recorded in --data-dir, else the system's roots)"),
	cliconf.K("agent.socket", "agent-socket", client.DefaultSocket, "the tpmauthn agent's socket: without an operator key, commands run as the person logged in there (tpmauthnctl login)"),
	cliconf.K("json", "json", false, "print JSON for scripts instead of tables"),
	cliconf.K("timeout", "timeout", 5*time.Second, "how long to wait for the verifier"),
}

type settings struct {
	DataDir string `mapstructure:"data_dir"`
	NATS    struct {
		URL   string `mapstructure:"url"`
		Creds string `mapstructure:"creds"`
		CA    string `mapstructure:"ca"`
	} `mapstructure:"nats"`
	Agent struct {
		Socket string `mapstructure:"socket"`
	} `mapstructure:"agent"`
	JSON    bool          `mapstructure:"json"`
	Timeout time.Duration `mapstructure:"timeout"`
}

// app is what every subcommand shares.
type app struct {
	s   settings
	out io.Writer
	nc  *nats.Conn
	// subject is where an operation is asked: SubjectAdminPrefix + op with
	// the operator key, AdminPersonSubject for a person (set by connect).
	subject func(op string) string
}

func newRootCmd() *cobra.Command {
	a := &app{}
	root := &cobra.Command{
		Use:           "tpmauthnctl",
		Short:         "Operate a tpmauthn fleet: join tokens, hosts, credentials",
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       buildinfo.Read().String(),
		Example: `  tpmauthnctl --data-dir ./verifier token create --roles demo --ttl 1h
  tpmauthnctl --data-dir ./verifier host list`,
	}
	root.PersistentFlags().AddFlagSet(flagsOf(globalKeys))
	root.PersistentPreRunE = func(cmd *cobra.Command, _ []string) error {
		a.out = cmd.OutOrStdout()
		return cliconf.LoadFlags(cmd.Flags(), globalKeys, &a.s)
	}
	root.PersistentPostRun = func(*cobra.Command, []string) {
		if a.nc != nil {
			a.nc.Close()
		}
	}
	root.AddCommand(a.tokenCmd(), a.hostCmd(), a.credentialCmd(), a.ekCmd(), a.auditCmd(), a.statusCmd(), a.natsConfigCmd(),
		a.backupCmd(), a.restoreCmd(), a.loginCmd(), a.personCmd(), a.doctorCmd())
	root.AddCommand(clidocs.Command(root))
	return root
}

// connect opens the operator connection on first use: with the operator
// key (--creds, or --data-dir's), else as the person logged in at this
// host's agent (tpmauthnctl login), whose roles say what they may do.
func (a *app) connect() (*nats.Conn, error) {
	if a.nc != nil {
		return a.nc, nil
	}
	url, creds := a.s.NATS.URL, a.s.NATS.Creds
	if a.s.DataDir == "" && creds == "" {
		return a.connectAsPerson(url)
	}
	if a.s.DataDir != "" {
		seed, urlFile := keys.OperatorFiles(a.s.DataDir)
		if creds == "" {
			creds = seed
		}
		if url == "" {
			b, err := waitForFile(urlFile, a.s.Timeout)
			if err != nil {
				return nil, fmt.Errorf("no client URL in %s after %v (has tpmauthn-verifier started there? --timeout waits longer): %w", a.s.DataDir, a.s.Timeout, err)
			}
			url = strings.TrimSpace(string(b))
		}
	}
	if url == "" {
		return nil, errors.New("say where the verifier is: --data-dir of a local verifier, or --nats-url and --creds")
	}
	kp, err := keys.LoadNKey(creds)
	if err != nil {
		return nil, fmt.Errorf("operator credential: %w", err)
	}
	pk, err := kp.PublicKey()
	if err != nil {
		return nil, err
	}
	tlsOpts, err := a.tlsOptions(url)
	if err != nil {
		return nil, err
	}
	return a.dial(url, append(tlsOpts, nats.Nkey(pk, kp.Sign)))
}

// connectAsPerson connects through the agent with the caller's person
// credential: the NATS URL and CA are the agent's unless given.
func (a *app) connectAsPerson(url string) (*nats.Conn, error) {
	ac := client.New(a.s.Agent.Socket)
	ctx, cancel := context.WithTimeout(context.Background(), a.s.Timeout)
	defer cancel()
	who, err := ac.WhoAmI(ctx)
	if err != nil {
		return nil, fmt.Errorf("say where the verifier is and who you are: log in as a person (tpmauthnctl login) on a host whose agent serves you, or give --data-dir of a local verifier, or --nats-url and --creds (the operator key, break-glass): %w", err)
	}
	if who.Person == "" {
		return nil, fmt.Errorf("the agent signs for you as workload %s, not as a person: log in with tpmauthnctl login, or give an operator key (--creds)", esc(who.Workload))
	}
	if url == "" {
		url = who.NATSURL
	}
	opts, err := client.NATSOptions(a.s.Agent.Socket)
	if err != nil {
		return nil, err
	}
	a.subject = func(op string) string { return api.AdminPersonSubject(who.Person, who.CredentialID, op) }
	return a.dial(url, opts)
}

func (a *app) dial(url string, opts []nats.Option) (*nats.Conn, error) {
	nc, err := nats.Connect(url, append(opts, nats.Name("tpmauthnctl"), nats.Timeout(a.s.Timeout), nats.MaxReconnects(0))...)
	if err != nil {
		if errors.Is(err, nats.ErrNoServers) {
			return nil, fmt.Errorf("connect to %s: %w (is tpmauthn-verifier running?)", url, err)
		}
		return nil, fmt.Errorf("connect to %s: %w", url, natstls.Explain(url, err))
	}
	a.nc = nc
	return nc, nil
}

// tlsOptions verify the server with --nats-ca, else the bundle a local
// verifier recorded, else the system's roots; TLS is required beyond
// loopback (the operator's login could be relayed otherwise).
func (a *app) tlsOptions(url string) ([]nats.Option, error) {
	ca := a.s.NATS.CA
	if ca == "" && a.s.DataDir != "" {
		if _, err := os.Stat(keys.ClientCAFile(a.s.DataDir)); err == nil {
			ca = keys.ClientCAFile(a.s.DataDir)
		}
	}
	var t natstls.Trust
	if ca != "" {
		pool, _, err := natstls.LoadRoots(ca)
		if err != nil {
			return nil, err
		}
		t.Roots = pool
	}
	return natstls.Options(url, t)
}

// call sends an admin request and decodes the reply into resp.
func (a *app) call(op string, req, resp any) error {
	nc, err := a.connect()
	if err != nil {
		return err
	}
	body, err := json.Marshal(req)
	if err != nil {
		return err
	}
	subject := api.SubjectAdminPrefix + op
	if a.subject != nil {
		subject = a.subject(op)
	}
	m, err := nc.Request(subject, body, a.s.Timeout)
	if errors.Is(err, nats.ErrNoResponders) {
		return errors.New("no verifier is serving on this NATS server (is tpmauthn-verifier running?)")
	}
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	if code := m.Header.Get("Nats-Service-Error-Code"); code != "" {
		return fmt.Errorf("%s: %s (%s)", op, m.Header.Get("Nats-Service-Error"), code)
	}
	if resp == nil {
		return nil
	}
	return json.Unmarshal(m.Data, resp)
}

// print writes v as JSON with --json, else calls table.
func (a *app) print(v any, table func(w *tabwriter.Writer)) error {
	if a.s.JSON {
		enc := json.NewEncoder(a.out)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	w := tabwriter.NewWriter(a.out, 2, 4, 2, ' ', 0)
	table(w)
	return w.Flush()
}

// tableZone is the time zone of the times in tables: the local one (tests
// set another, without touching time.Local, which running servers read).
var tableZone = time.Local

func when(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.In(tableZone).Format("2006-01-02 15:04:05")
}

func list(s []string) string {
	if len(s) == 0 {
		return "-"
	}
	return strings.Join(s, ",")
}

// row writes one table row: its cells escaped (esc), separated by tabs.
func row(w io.Writer, cells ...any) {
	for i, c := range cells {
		if i > 0 {
			io.WriteString(w, "\t")
		}
		io.WriteString(w, esc(fmt.Sprint(c)))
	}
	io.WriteString(w, "\n")
}

// esc makes text that an attacker may have chosen (a hostname an enrolling
// client claimed, a CONNECT user name quoted in a reason) safe for a
// terminal and for the table around it: control characters, tabs, newlines
// and invisible format characters (bidirectional overrides among them)
// become visible escapes, so they cannot move the cursor, rewrite what an
// operator reads, or forge a row.
func esc(s string) string {
	clean := true
	for _, r := range s {
		if !unicode.IsGraphic(r) || r == '\\' {
			clean = false
			break
		}
	}
	if clean {
		return s
	}
	var b strings.Builder
	for _, r := range s {
		switch {
		case r == '\\':
			b.WriteString(`\\`)
		case r == utf8.RuneError:
			b.WriteString(`\ufffd`)
		case r < 0x100 && !unicode.IsGraphic(r):
			fmt.Fprintf(&b, `\x%02x`, r)
		case !unicode.IsGraphic(r):
			fmt.Fprintf(&b, `\u%04x`, r)
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}

// waitForFile reads path, waiting up to timeout for it to appear: a
// verifier that is still starting writes its client URL when it serves.
func waitForFile(path string, timeout time.Duration) ([]byte, error) {
	deadline := time.Now().Add(timeout)
	for {
		b, err := os.ReadFile(path)
		if err == nil || !errors.Is(err, fs.ErrNotExist) || time.Now().After(deadline) {
			return b, err
		}
		time.Sleep(100 * time.Millisecond)
	}
}
