// Package jstest starts a real nats-server with JetStream for a test: what
// the store and the audit writer need, without the verifier's accounts.
// Under -short the test is skipped (make test-short runs no servers).
package jstest

import (
	"net"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Server is a running JetStream server and a connection to it, both closed
// when the test ends.
type Server struct {
	*server.Server
	NC *nats.Conn
	JS jetstream.JetStream

	opts *server.Options
}

// Start runs a JetStream server on a free loopback port, its store in a
// temporary directory; opts change its options before it starts (a small
// JetStreamMaxStore, say).
func Start(tb testing.TB, opts ...func(*server.Options)) *Server {
	tb.Helper()
	if testing.Short() {
		tb.Skip("starts a nats-server (skipped under -short)")
	}
	o := &server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: tb.TempDir(), NoLog: true, NoSigs: true}
	for _, f := range opts {
		f(o)
	}
	srv, err := server.NewServer(o)
	if err != nil {
		tb.Fatal(err)
	}
	srv.Start()
	tb.Cleanup(srv.Shutdown)
	if !srv.ReadyForConnections(10 * time.Second) {
		tb.Fatal("nats-server not ready within 10s")
	}
	o.Port = srv.Addr().(*net.TCPAddr).Port // a restart keeps it
	nc, err := nats.Connect(srv.ClientURL(), nats.ReconnectWait(100*time.Millisecond), nats.MaxReconnects(-1))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		tb.Fatal(err)
	}
	return &Server{Server: srv, NC: nc, JS: js, opts: o}
}

// Down shuts the server down (NC keeps trying to reconnect).
func (s *Server) Down() {
	s.Shutdown()
	s.WaitForShutdown()
}

// Up starts the server again after Down, on the same port and store.
func (s *Server) Up(tb testing.TB) {
	tb.Helper()
	srv, err := server.NewServer(s.opts.Clone())
	if err != nil {
		tb.Fatal(err)
	}
	srv.Start()
	tb.Cleanup(srv.Shutdown)
	if !srv.ReadyForConnections(10 * time.Second) {
		tb.Fatal("nats-server not ready within 10s after a restart")
	}
	s.Server = srv
}
