package bench

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/tpmauthn/tpmauthn/verifier/keys"
)

// A storm larger than one process may hold (each connection is a file
// descriptor in the server's process, and a container may not raise the
// hard limit) runs on a cluster of two servers: server a in this process
// with the verifier, server b in a child process (tpmauthn-bench
// storm-server), and the clients in two children, each dialling both
// servers, so each server holds about half. Both servers go down, then come
// up together. Both run JetStream: nats-server elects no meta leader in a
// cluster with only one JetStream server (its raft group counts at least
// two), so the store's restart is the cluster's (a meta leader elected by
// both) and the verifier's streams may live on either.

// StormServerArg is the subcommand that runs the second storm server.
const StormServerArg = "storm-server"

// clusterStorm is storm on two servers; n clients in all.
func clusterStorm(dir string, n int, busy bool, exe string) (*StormResult, error) {
	ports := make([]int, 4) // a's and b's client and cluster ports
	for i := range ports {
		p, err := freeTCPPort()
		if err != nil {
			return nil, err
		}
		ports[i] = p
	}
	cluster := func(name string, listen, route int) string {
		return fmt.Sprintf("server_name: %s\ncluster { name: storm, listen: \"127.0.0.1:%d\", routes: [\"nats://127.0.0.1:%d\"] }", name, listen, route)
	}
	// b first: a's JetStream waits for its cluster to form before the
	// verifier can start.
	b, err := startStormServerChild(exe, dir, fmt.Sprintf("127.0.0.1:%d", ports[1]), cluster("storm-b", ports[3], ports[2]))
	if err != nil {
		return nil, err
	}
	defer b.close()
	ss, v, err := startTpmauthnExtra(dir, fmt.Sprintf("127.0.0.1:%d", ports[0]), cluster("storm-a", ports[2], ports[3]), 256)
	if err != nil {
		return nil, err
	}
	defer func() { ss.srv.Shutdown() }()
	defer v.Close()
	creds, err := writeFixture(v, n)
	if err != nil {
		return nil, err
	}
	res := &StormResult{Clients: n, Busy: busy, Servers: 2}
	stop, err := startBusyIf(busy)
	if err != nil {
		return nil, err
	}
	defer stop()
	urls := fmt.Sprintf("nats://127.0.0.1:%d,nats://127.0.0.1:%d", ports[0], ports[1])
	groups := []stormGroup{{urls, creds[:n/2]}, {urls, creds[n/2:]}}
	down := func() error {
		if err := b.do("stop", "down"); err != nil {
			return err
		}
		return ss.stop()
	}
	up := func() error {
		if _, err := io.WriteString(b.stdin, "start\n"); err != nil {
			return err
		}
		if err := ss.start(); err != nil {
			return err
		}
		return b.expect("up")
	}
	return stormChildren(exe, groups, down, up, v, res)
}

// stormServerChild is server b, in its own process.
type stormServerChild struct {
	stdin io.WriteCloser
	out   *bufio.Scanner
	close func()
}

// startStormServerChild writes b's configuration (tpmauthn's layout with
// the verifier's keys in dir/verifier, no JetStream) and starts it.
func startStormServerChild(exe, dir, listen, extra string) (*stormServerChild, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	k, _, err := keys.LoadOrCreate(filepath.Join(dir, "verifier"))
	if err != nil {
		return nil, err
	}
	conf := filepath.Join(dir, "server-b.conf")
	text := keys.ServerConfig(k, keys.ServerConfigOptions{Listen: listen, StoreDir: filepath.Join(dir, "js-b"), Extra: extra}) + maxConnections()
	if err := os.WriteFile(conf, []byte(text), 0o600); err != nil {
		return nil, err
	}
	_, stdin, out, stop, err := startChild(exe, StormServerArg, conf)
	if err != nil {
		return nil, err
	}
	c := &stormServerChild{stdin: stdin, out: out, close: stop}
	if err := c.expect("up"); err != nil {
		stop()
		return nil, err
	}
	return c, nil
}

func (c *stormServerChild) do(cmd, want string) error {
	if _, err := io.WriteString(c.stdin, cmd+"\n"); err != nil {
		return fmt.Errorf("storm server: %s: %w", cmd, err)
	}
	return c.expect(want)
}

func (c *stormServerChild) expect(want string) error {
	if !c.out.Scan() {
		return errors.New("storm server: ended (see stderr)")
	}
	if got := c.out.Text(); got != want {
		return fmt.Errorf("storm server: %q, want %q", got, want)
	}
	return nil
}

// StormServerMain runs server b from the configuration file in args: it
// prints "up" once ready, and on stdin "stop" shuts it down ("down"),
// "start" starts it again ("up").
func StormServerMain(args []string) error {
	if len(args) != 1 {
		return errors.New("usage: storm-server CONF")
	}
	raiseFDLimit()
	s := &stormServer{conf: args[0]}
	if err := s.start(); err != nil {
		return err
	}
	fmt.Println("up")
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		switch cmd := strings.TrimSpace(in.Text()); cmd {
		case "stop":
			_ = s.stop()
			fmt.Println("down")
		case "start":
			if err := s.start(); err != nil {
				return err
			}
			fmt.Println("up")
		default:
			return fmt.Errorf("unknown command %q", cmd)
		}
	}
	if s.srv.Running() {
		_ = s.stop()
	}
	return nil
}

// maxConnections caps a storm server below the file limit: a server that
// comes up first must turn the clients beyond it away (they go on to the
// other) rather than run out of descriptors.
func maxConnections() string {
	return fmt.Sprintf("max_connections: %d\n", max(1000, int(min(fdLimit(), 100000+2000))-2000))
}
