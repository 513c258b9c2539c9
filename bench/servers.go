package bench

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"
	callout "github.com/synadia-io/callout.go"

	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/attestation"
	"github.com/tpmauthn/tpmauthn/verifier"
	"github.com/tpmauthn/tpmauthn/verifier/keys"
	"github.com/tpmauthn/tpmauthn/verifier/record"
)

// scenario is one way to authenticate: a server and how clients connect.
type scenario struct {
	name    string
	url     string
	options func(worker int) ([]nats.Option, error)
	stop    func()
}

// quietServer starts a server without logs, its goroutines labelled as the
// server's part of the process.
func quietServer(opts *server.Options) (*server.Server, error) {
	opts.NoLog, opts.NoSigs = os.Getenv("BENCH_SERVER_LOG") == "", true
	s, err := server.NewServer(opts)
	if err != nil {
		return nil, err
	}
	if !opts.NoLog {
		s.ConfigureLogger()
	}
	inPart(partServer, s.Start)
	if !s.ReadyForConnections(10 * time.Second) {
		return nil, fmt.Errorf("server not ready")
	}
	return s, nil
}

func noAuth() (*scenario, error) {
	s, err := quietServer(&server.Options{Host: "127.0.0.1", Port: -1})
	if err != nil {
		return nil, err
	}
	return &scenario{name: "no-auth", url: s.ClientURL(), stop: s.Shutdown,
		options: func(int) ([]nats.Option, error) { return nil, nil }}, nil
}

func staticNkeys(workers int) (*scenario, error) {
	kps := make([]nkeys.KeyPair, workers)
	var users []*server.NkeyUser
	for i := range kps {
		kp, _ := nkeys.CreateUser()
		pk, _ := kp.PublicKey()
		kps[i] = kp
		users = append(users, &server.NkeyUser{Nkey: pk})
	}
	s, err := quietServer(&server.Options{Host: "127.0.0.1", Port: -1, Nkeys: users})
	if err != nil {
		return nil, err
	}
	return &scenario{name: "static-nkeys", url: s.ClientURL(), stop: s.Shutdown,
		options: func(w int) ([]nats.Option, error) {
			kp := kps[w%len(kps)]
			pk, _ := kp.PublicKey()
			return []nats.Option{nats.Nkey(pk, kp.Sign)}, nil
		}}, nil
}

// noopCallout is auth callout with a responder that approves everything,
// built on synadia-io/callout.go, with the same accounts and xkey sealing as
// tpmauthn's layout.
func noopCallout(dir string) (*scenario, error) {
	k, _, err := keys.LoadOrCreate(dir)
	if err != nil {
		return nil, err
	}
	conf := keys.ServerConfig(k, keys.ServerConfigOptions{Listen: "127.0.0.1:-1"})
	path := filepath.Join(dir, "noop.conf")
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		return nil, err
	}
	opts, err := server.ProcessConfigFile(path)
	if err != nil {
		return nil, err
	}
	s, err := quietServer(opts)
	if err != nil {
		return nil, err
	}
	var nc *nats.Conn
	var svc *callout.AuthorizationService
	inPart(partResponder, func() { nc, svc, err = noopResponder(s.ClientURL(), k) })
	if err != nil {
		return nil, err
	}
	return &scenario{name: "noop-callout", url: s.ClientURL(),
		stop:    func() { _ = svc.Stop(); nc.Close(); s.Shutdown() },
		options: func(int) ([]nats.Option, error) { return []nats.Option{nats.UserInfo("bench", "bench")}, nil }}, nil
}

func noopResponder(url string, k *keys.Set) (*nats.Conn, *callout.AuthorizationService, error) {
	vpk, _ := k.Verifier.PublicKey()
	nc, err := nats.Connect(url, nats.Nkey(vpk, k.Verifier.Sign))
	if err != nil {
		return nil, nil, err
	}
	issuer := k.Issuer
	svc, err := callout.NewAuthorizationService(nc,
		callout.Authorizer(func(req *jwt.AuthorizationRequest) (string, error) {
			uc := jwt.NewUserClaims(req.UserNkey)
			uc.Audience = keys.AccountApp
			uc.Expires = time.Now().Add(10 * time.Minute).Unix()
			uc.Pub.Allow.Add("bench.>")
			uc.Sub.Allow.Add("bench.>", "_INBOX.>")
			return uc.Encode(issuer)
		}),
		callout.ResponseSignerKey(issuer), callout.EncryptionKey(k.XKey),
		callout.AsyncWorkers(64), callout.Logger(quiet{}))
	if err != nil {
		nc.Close()
		return nil, nil, err
	}
	if err := nc.Flush(); err != nil {
		nc.Close()
		return nil, nil, err
	}
	return nc, svc, nil
}

type quiet struct{}

func (quiet) Noticef(string, ...any) {}
func (quiet) Warnf(string, ...any)   {}
func (quiet) Fatalf(string, ...any)  {}
func (quiet) Errorf(string, ...any)  {}
func (quiet) Debugf(string, ...any)  {}
func (quiet) Tracef(string, ...any)  {}

const benchPolicy = `session_ttl: 10m
roles:
  bench:
    publish: {allow: ["bench.>"]}
    subscribe: {allow: ["bench.>"]}
bindings:
  - host_roles: [bench]
    roles: [bench]
`

// softCred is a fixture credential: a software P-256 key and its counter.
type softCred struct {
	id      []byte
	key     *ecdsa.PrivateKey
	mu      sync.Mutex // a reconnect may sign while an old attempt still does
	counter uint32
}

// nkey is how a client of the credential connects: its ID as the nkey, an
// assertion bundle over the server's nonce as the signature.
func (c *softCred) nkey() nats.Option {
	origin := attestation.VerifierOrigin(benchRPID) // what the agent signs NATS connects for
	return nats.Nkey(b64(c.id), func(nonce []byte) ([]byte, error) {
		c.mu.Lock()
		defer c.mu.Unlock()
		c.counter++
		return softBundle(c, benchRPID, origin, nonce)
	})
}

// benchExe is this executable when it is tpmauthn-bench, whose subcommands
// run the storm clients and the scale run's verifier in processes of their own.
func benchExe() (string, bool) {
	exe, err := os.Executable()
	return exe, err == nil && strings.Contains(filepath.Base(exe), "tpmauthn-bench")
}

// startChild runs this executable with args, its stderr ours; the caller
// ends it with the returned stop.
func startChild(exe string, args ...string) (cmd *exec.Cmd, stdin io.WriteCloser, stdout *bufio.Scanner, stop func(), err error) {
	cmd = exec.Command(exe, args...)
	if stdin, err = cmd.StdinPipe(); err != nil {
		return nil, nil, nil, nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, nil, nil, nil, err
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, nil, nil, nil, err
	}
	return cmd, stdin, bufio.NewScanner(out), func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }, nil
}

// tpmauthnScenario runs the real verifier (full verification) with one
// fixture credential per worker. inProcess: it reaches its server in
// memory, as the one-command deployment's embedded server is reached;
// otherwise over TCP, as a verifier beside an existing cluster (named
// tpmauthn-tcp).
func tpmauthnScenario(dir string, workers int, inProcess bool) (*scenario, error) {
	name := "tpmauthn"
	if !inProcess {
		name = "tpmauthn-tcp"
	}
	srv, v, err := startTpmauthnIn(dir, "127.0.0.1:-1", "", 0, inProcess)
	if err != nil {
		return nil, err
	}
	stop := func() { v.Close(); srv.srv.Shutdown() }
	creds, err := writeFixture(v, workers)
	if err != nil {
		stop()
		return nil, err
	}
	return &scenario{name: name, url: srv.srv.ClientURL(), stop: stop,
		options: func(w int) ([]nats.Option, error) {
			return []nats.Option{creds[w%len(creds)].nkey()}, nil // one worker per credential
		}}, nil
}

// softBundle signs like the agent: authenticatorData, clientDataJSON over
// the NATS challenge, ECDSA over both, the compact bundle.
func softBundle(c *softCred, rpID, origin string, nonce []byte) ([]byte, error) {
	ad := attestation.NewAuthenticatorData(rpID, c.counter).Marshal()
	cdj, err := attestation.NewClientDataJSON(attestation.TypeGet, attestation.NATSChallenge(nonce), origin)
	if err != nil {
		return nil, err
	}
	d := sha256.Sum256(attestation.SignedData(ad, cdj))
	sig, err := ecdsa.SignASN1(rand.Reader, c.key, d[:])
	if err != nil {
		return nil, err
	}
	return attestation.MarshalBundle(&attestation.Assertion{CredentialID: c.id, AuthData: ad, ClientDataJSON: cdj, Signature: sig})
}

// writeFixture stores a host and n credentials exactly as enrollment and
// registration store them (record.Host, record.Credential records).
func writeFixture(v *verifier.Verifier, n int) ([]*softCred, error) {
	return writeFleet(v.ClientURL(), v.Keys(), n, n)
}

// writeFleet stores n credentials, perHost workloads on each host.
func writeFleet(url string, k *keys.Set, n, perHost int) ([]*softCred, error) {
	kp := k.Verifier
	pk, _ := kp.PublicKey()
	nc, err := nats.Connect(url, nats.Nkey(pk, kp.Sign))
	if err != nil {
		return nil, err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	ctx := context.Background()
	hosts, err := js.KeyValue(ctx, "tpmauthn_hosts")
	if err != nil {
		return nil, err
	}
	credsKV, err := js.KeyValue(ctx, "tpmauthn_credentials")
	if err != nil {
		return nil, err
	}
	now := time.Now().UTC()
	out := make([]*softCred, n)
	var h record.Host
	for i := range out {
		if i%perHost == 0 {
			h = record.Host{V: 1, ID: fmt.Sprintf("h-bench-%d", i/perHost), Hostname: fmt.Sprintf("bench-%d", i/perHost),
				Roles: []string{"bench"}, Status: api.HostActive, Created: now, Updated: now}
			if err := putJSON(ctx, hosts, h.ID, h); err != nil {
				return nil, err
			}
		}
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		pt, _ := key.PublicKey.Bytes()
		cose, err := attestation.EncodeCOSEKey(pt[1:33], pt[33:65])
		if err != nil {
			return nil, err
		}
		id := make([]byte, 16)
		_, _ = rand.Read(id)
		c := record.Credential{V: 1, ID: base64.RawURLEncoding.EncodeToString(id), Host: h.ID, Workload: fmt.Sprintf("w%d", i),
			PublicKey: cose, Status: api.CredentialActive, Created: now, Updated: now}
		if err := putJSON(ctx, credsKV, c.ID, c); err != nil {
			return nil, err
		}
		out[i] = &softCred{id: id, key: key}
	}
	return out, nil
}

func putJSON(ctx context.Context, kv jetstream.KeyValue, key string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	_, err = kv.Put(ctx, key, b)
	return err
}

// benchRPID is the relying party of every tpmauthn scenario.
const benchRPID = "bench.example.com"

// startTpmauthn starts tpmauthn's nats-server layout on listen (the server
// part) and a verifier against it (the responder part), as an operator
// running both would; JetStream and keys live in dir. workers 0 is the
// verifier's default.
func startTpmauthn(dir, listen string, workers int) (*stormServer, *verifier.Verifier, error) {
	return startTpmauthnIn(dir, listen, "", workers, false)
}

// startTpmauthnExtra is startTpmauthn with extra server configuration (a
// cluster block).
func startTpmauthnExtra(dir, listen, extra string, workers int) (*stormServer, *verifier.Verifier, error) {
	return startTpmauthnIn(dir, listen, extra, workers, false)
}

// startTpmauthnIn is startTpmauthnExtra; inProcess has the verifier reach
// the server in memory, as the one-command deployment (the embedded
// server) does, instead of over TCP, as a verifier beside a cluster does.
// The storms restart the server under a running verifier, which only the
// latter deployment does, so they use TCP.
func startTpmauthnIn(dir, listen, extra string, workers int, inProcess bool) (*stormServer, *verifier.Verifier, error) {
	ss, _, policy, err := startTpmauthnServer(dir, listen, extra)
	if err != nil {
		return nil, nil, err
	}
	cfg := verifier.Config{DataDir: filepath.Join(dir, "verifier"), NATSURL: ss.srv.ClientURL(), PolicyFile: policy, RPID: benchRPID, Workers: workers, Logger: quietLog()}
	if inProcess {
		cfg.NATSInProcess = serverPart{ss.srv}
	}
	v, err := verifier.New(cfg)
	if err == nil {
		inPart(partResponder, func() { err = v.Start(context.Background()) })
	}
	if err != nil {
		ss.srv.Shutdown()
		return nil, nil, err
	}
	return ss, v, nil
}

// startTpmauthnServer starts the server of tpmauthn's layout, with the
// verifier's keys in dir/verifier and a policy file for it; extra is
// appended to its configuration.
func startTpmauthnServer(dir, listen, extra string) (ss *stormServer, k *keys.Set, policy string, err error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, nil, "", err
	}
	if k, _, err = keys.LoadOrCreate(filepath.Join(dir, "verifier")); err != nil {
		return nil, nil, "", err
	}
	policy = filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(policy, []byte(benchPolicy), 0o600); err != nil {
		return nil, nil, "", err
	}
	conf := keys.ServerConfig(k, keys.ServerConfigOptions{Listen: listen, StoreDir: filepath.Join(dir, "js"), Extra: extra})
	ss = &stormServer{conf: filepath.Join(dir, "server.conf")}
	if err := os.WriteFile(ss.conf, []byte(conf+maxConnections()), 0o600); err != nil {
		return nil, nil, "", err
	}
	if err := ss.start(); err != nil {
		return nil, nil, "", err
	}
	return ss, k, policy, nil
}

// quietLog discards logs unless BENCH_LOG is set (then warnings to stderr).
func quietLog() *slog.Logger {
	if os.Getenv("BENCH_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	return slog.New(slog.DiscardHandler)
}

// serverPart hands out in-process connections whose server-side goroutines
// are labelled as the server's part of the process, as the accepted TCP
// connections' are.
type serverPart struct{ srv *server.Server }

func (p serverPart) InProcessConn() (c net.Conn, err error) {
	// On a goroutine of its own: inPart would leave the caller's goroutine
	// (the verifier's, labelled the responder's) with no label at all.
	done := make(chan struct{})
	go inPart(partServer, func() {
		defer close(done)
		c, err = p.srv.InProcessConn()
	})
	<-done
	return c, err
}
