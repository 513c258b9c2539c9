package jstest

import (
	"fmt"
	"net/url"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/tpmauthn/tpmauthn/internal/freeport"
)

// Cluster starts n JetStream servers routed into one cluster (each on
// free loopback ports, its store in a temporary directory) and waits
// until JetStream's meta group has a leader that sees every peer current,
// so that a replicated stream can be made at once. Each Server's NC connects to that server only.
func Cluster(tb testing.TB, n int) []*Server {
	tb.Helper()
	if testing.Short() {
		tb.Skip("starts nats-servers (skipped under -short)")
	}
	ports := make([]int, n)
	for i := range ports {
		p, err := freeport.Pick()
		if err != nil {
			tb.Fatal(err)
		}
		ports[i] = p
	}
	var routes []*url.URL
	for _, p := range ports {
		routes = append(routes, &url.URL{Scheme: "nats", Host: fmt.Sprintf("127.0.0.1:%d", p)})
	}
	out := make([]*Server, n)
	for i := range n {
		out[i] = Start(tb, func(o *server.Options) {
			o.ServerName = fmt.Sprintf("js%d", i)
			o.Cluster = server.ClusterOpts{Name: "jstest", Host: "127.0.0.1", Port: ports[i]}
			o.Routes = routes
		})
	}
	deadline := time.Now().Add(20 * time.Second)
	for _, s := range out {
		for !s.metaFormed(n) {
			if time.Now().After(deadline) {
				tb.Fatal("jstest: JetStream's meta group not formed within 20s")
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	return out
}

// metaFormed reports whether this server knows JetStream's meta leader
// and, if it is the leader, sees all n peers current: a replicated stream
// made before that may wait for a peer.
func (s *Server) metaFormed(n int) bool {
	jsz, err := s.Jsz(&server.JSzOptions{})
	if err != nil || jsz.Meta == nil || jsz.Meta.Leader == "" {
		return false
	}
	if jsz.Meta.Leader != s.Name() {
		return true
	}
	current := 0
	for _, p := range jsz.Meta.Replicas {
		if p.Current {
			current++
		}
	}
	return current == n-1
}
