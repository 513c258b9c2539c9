// Package jstest starts a real nats-server with JetStream for a test: what
// the store and the audit writer need, without the verifier's accounts.
// Under -short the test is skipped (make test-short runs no servers).
package jstest

import (
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
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		tb.Fatal(err)
	}
	return &Server{Server: srv, NC: nc, JS: js}
}
