package verifier

import (
	"github.com/tpmauthn/tpmauthn/internal/atomicfile"

	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tpmauthn/tpmauthn/verifier/keys"
	"github.com/tpmauthn/tpmauthn/verifier/store"
)

// The embedded servers of several verifiers can form one JetStream cluster
// (ClusterListen, ClusterRoutes): the one-command default grown into an HA
// fleet with the same accounts, callout and keys. Routes carry everything,
// JetStream's replication included, so they are always mutual TLS with the
// NATS CA: only a node holding a certificate from that CA (a verifier with
// the fleet's key material) can join.

const (
	clusterName    = "tpmauthn"
	fileServerName = "server-name"
)

var serverNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$`)

// serverName is the embedded server's name: configured, else kept in the
// data directory (created on the first clustered start), so that the
// cluster knows a restarted node as the same peer. A standalone server
// keeps the name it always had.
func (v *Verifier) serverName() (string, error) {
	if v.cfg.ServerName != "" {
		return v.cfg.ServerName, nil
	}
	if v.cfg.ClusterListen == "" {
		return "tpmauthn", nil
	}
	path := filepath.Join(v.cfg.DataDir, fileServerName)
	b, err := os.ReadFile(path)
	if err == nil {
		name := strings.TrimSpace(string(b))
		if !serverNameRE.MatchString(name) {
			return "", fmt.Errorf("%s: %q is not a server name", path, name)
		}
		return name, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return "", err
	}
	host, _ := os.Hostname()
	host = strings.Map(func(r rune) rune {
		if r == '.' || r == '-' || r == '_' || ('a' <= r && r <= 'z') || ('A' <= r && r <= 'Z') || ('0' <= r && r <= '9') {
			return r
		}
		return -1
	}, strings.Split(host, ".")[0])
	suffix := make([]byte, 3)
	_, _ = rand.Read(suffix)
	name := "tpmauthn-" + host + "-" + hex.EncodeToString(suffix)
	if len(name) > 63 {
		name = name[:63]
	}
	if err := atomicfile.Write(path, []byte(name+"\n"), 0o644); err != nil {
		return "", fmt.Errorf("keep the server name: %w", err)
	}
	return name, nil
}

// clusterBlock is the embedded server's cluster block ("" standalone).
func (v *Verifier) clusterBlock(certFile, keyFile, caFile string) string {
	if v.cfg.ClusterListen == "" {
		return ""
	}
	routes := make([]string, 0, len(v.cfg.ClusterRoutes))
	for _, r := range v.cfg.ClusterRoutes {
		if !strings.Contains(r, "://") {
			r = "nats-route://" + r
		}
		routes = append(routes, fmt.Sprintf("%q", r))
	}
	return fmt.Sprintf(`cluster {
  name: %s
  listen: %q
  routes: [%s]
  tls { cert_file: %q, key_file: %q, ca_file: %q, verify: true, timeout: 2 }
}`, clusterName, v.cfg.ClusterListen, strings.Join(routes, ", "), certFile, keyFile, caFile)
}

// replicas decides the buckets' and the audit stream's replicas: the
// configured number, else 3 on a JetStream cluster of at least 3 servers
// (as the servers say), else 1. More than there are servers is an error.
func (v *Verifier) replicas(ctx context.Context) (int, error) {
	size := 1
	if v.srv == nil || v.cfg.ClusterListen != "" {
		var err error
		if size, err = v.clusterSize(ctx); err != nil {
			return 0, err
		}
	}
	n := v.cfg.Replicas
	if n == 0 {
		n = 1
		if size >= 3 {
			n = 3
		}
	}
	if err := store.CheckReplicas(n, size); err != nil {
		return 0, err
	}
	return n, nil
}

// clusterSize asks the servers (system account, JSZ) how many servers the
// JetStream cluster has: 1 for a standalone server.
func (v *Verifier) clusterSize(ctx context.Context) (int, error) {
	opts, err := v.connOptions("tpmauthn-verifier-setup")
	if err != nil {
		return 0, err
	}
	kp := v.keys.Sys
	nc, err := nats.Connect(v.dialURL(), append(opts, nats.Nkey(keys.Public(kp), kp.Sign), nats.MaxReconnects(0))...)
	if err != nil {
		return 0, fmt.Errorf("ask the JetStream cluster's size (system account): %w", err)
	}
	defer nc.Close()
	// A clustered JetStream knows its size once its peers meet and elect a
	// meta leader: ask until one answers with a leader. An embedded node
	// also waits for the nodes its routes name: a meta leader elected by the
	// first two would make the third's buckets and audit stream R1 (found by
	// the fault campaign: the audit stream, which the verifier never
	// updates, stayed on the one node that then stopped).
	want := 0
	if v.srv != nil {
		want = 1 + len(v.cfg.ClusterRoutes)
	}
	for attempt := 0; ; attempt++ {
		size, leader, err := askJSZ(ctx, nc)
		if err == nil && (size == 0 || leader) && size >= want {
			return max(size, 1), nil
		}
		if attempt == 60 || ctx.Err() != nil {
			if err == nil {
				err = fmt.Errorf("the JetStream cluster has %d of the %d servers its routes name, and a meta leader: %v; are the other nodes up and their routes reachable?", size, want, leader)
			}
			return 0, fmt.Errorf("ask the JetStream cluster's size: %w", err)
		}
		if attempt == 0 {
			v.log.Info("waiting for the JetStream cluster to elect its meta leader")
		}
		select {
		case <-time.After(500 * time.Millisecond):
		case <-ctx.Done():
		}
	}
}

// askJSZ asks one server for the meta cluster's size (0: standalone) and
// whether it has a leader.
func askJSZ(ctx context.Context, nc *nats.Conn) (size int, leader bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	m, err := nc.RequestWithContext(ctx, "$SYS.REQ.SERVER.PING.JSZ", nil)
	if err != nil {
		return 0, false, err
	}
	var resp struct {
		Data struct {
			Meta *struct {
				Size   int    `json:"cluster_size"`
				Leader string `json:"leader"`
			} `json:"meta_cluster"`
		} `json:"data"`
	}
	if err := json.Unmarshal(m.Data, &resp); err != nil {
		return 0, false, err
	}
	if resp.Data.Meta == nil {
		return 0, true, nil
	}
	return resp.Data.Meta.Size, resp.Data.Meta.Leader != "", nil
}

// validateCluster checks the cluster settings.
func (c *Config) validateCluster() []error {
	var errs []error
	if c.ServerName != "" && !serverNameRE.MatchString(c.ServerName) {
		errs = append(errs, fmt.Errorf("nats.server_name: %q: letters, digits, '.', '-', '_'", c.ServerName))
	}
	if c.Replicas < 0 || c.Replicas > 5 {
		errs = append(errs, fmt.Errorf("nats.replicas: %d: 0 (automatic) or 1 to 5", c.Replicas))
	}
	if c.ClusterListen == "" {
		if len(c.ClusterRoutes) > 0 {
			errs = append(errs, errors.New("nats.cluster_routes: needs nats.cluster_listen"))
		}
		return errs
	}
	if c.NATSURL != "" {
		errs = append(errs, errors.New("nats.cluster_listen: the embedded server's; with nats.url the cluster is yours"))
	}
	if _, _, err := net.SplitHostPort(c.ClusterListen); err != nil {
		errs = append(errs, fmt.Errorf("nats.cluster_listen: %q: want host:port", c.ClusterListen))
	}
	if c.NATSTLSCert != "" && c.NATSCA == "" {
		errs = append(errs, errors.New("nats.ca: routes are verified with it when the server's certificate is your own (nats.tls_cert)"))
	}
	return errs
}
