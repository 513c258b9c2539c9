// Package promserve serves a Prometheus registry on /metrics for the agent
// and the verifier.
package promserve

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Server serves one registry.
type Server struct {
	srv  *http.Server
	addr string
}

// Start listens on addr (port 0 picks one) and serves reg at /metrics, and
// the extra handlers at their paths (a /healthz).
func Start(addr string, reg *prometheus.Registry, extra ...Handler) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics_listen %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	for _, h := range extra {
		mux.Handle(h.Path, h.Handler)
	}
	s := &Server{srv: &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}, addr: ln.Addr().String()}
	go func() { _ = s.srv.Serve(ln) }()
	return s, nil
}

// Handler is an extra path to serve.
type Handler struct {
	Path    string
	Handler http.Handler
}

// Addr is the address it listens on.
func (s *Server) Addr() string { return s.addr }

// Stop shuts the server down, waiting at most two seconds. A nil Server is a
// no-op.
func (s *Server) Stop() {
	if s == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = s.srv.Shutdown(ctx)
}
