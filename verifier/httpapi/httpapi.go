package httpapi

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/tpmauthn/tpmauthn/internal/natstls"
)

// ErrCleartext: plain HTTP asked for beyond loopback.
var ErrCleartext = errors.New("plain HTTP beyond loopback")

// Config configures a Server.
type Config struct {
	// Listen is host:port (port 0 picks one).
	Listen string
	// TLS serves HTTPS; nil serves plain HTTP, which is refused unless
	// Listen is on loopback: logins carry codes and grants.
	TLS *tls.Config
	// RatePerSecond and Burst bound each client address's requests
	// (defaults 20 and 100): a flood cannot fill the logins bucket.
	RatePerSecond float64
	Burst         int
	Logger        *slog.Logger
}

// Server is a listening HTTP(S) server.
type Server struct {
	cfg  Config
	ln   net.Listener
	srv  *http.Server
	done chan struct{}
	lim  *limiter
}

// Listen opens the listener; Serve starts serving on it.
func Listen(cfg Config) (*Server, error) {
	host, _, err := net.SplitHostPort(cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("http.listen %q: want host:port: %w", cfg.Listen, err)
	}
	if cfg.TLS == nil && !natstls.LoopbackHost(host) {
		return nil, fmt.Errorf("%w: http.listen %q without TLS: logins would cross the network in clear; listen on 127.0.0.1 or serve TLS", ErrCleartext, cfg.Listen)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("http.listen %s: %w", cfg.Listen, err)
	}
	if cfg.TLS != nil {
		ln = tls.NewListener(ln, cfg.TLS)
	}
	return &Server{cfg: cfg, ln: ln, done: make(chan struct{}), lim: newLimiter(cfg.RatePerSecond, cfg.Burst)}, nil
}

// Addr is the address it listens on.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// URL is how this host reaches it: https (or http) and the listen address,
// a wildcard address replaced by loopback.
func (s *Server) URL() string {
	scheme := "http"
	if s.cfg.TLS != nil {
		scheme = "https"
	}
	host, port, _ := net.SplitHostPort(s.Addr())
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		host = "127.0.0.1"
	}
	return scheme + "://" + net.JoinHostPort(host, port)
}

// Serve serves h until Close.
func (s *Server) Serve(h http.Handler) {
	s.srv = &http.Server{
		Handler: s.harden(h),
		// Slow clients cannot hold connections: headers within 10 s, the
		// whole request within 30 s, idle keep-alives closed after 60 s.
		ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second, WriteTimeout: 30 * time.Second,
		IdleTimeout: 60 * time.Second, MaxHeaderBytes: 16 << 10,
		ErrorLog: slog.NewLogLogger(s.cfg.Logger.Handler(), slog.LevelWarn),
	}
	go func() {
		defer close(s.done)
		if err := s.srv.Serve(s.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.cfg.Logger.Error("HTTP listener stopped", "error", err)
		}
	}()
}

// Close stops serving, letting requests under way finish (at most 5 s).
func (s *Server) Close() {
	if s.srv == nil {
		_ = s.ln.Close()
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = s.srv.Shutdown(ctx)
	<-s.done
}

// maxBody bounds a request body: forms of a few fields.
const maxBody = 64 << 10

// harden wraps every response with the headers that keep it out of
// frames (clickjacking the device approval), caches and Referer headers
// (codes and states travel in URLs), bounds bodies, and rate-limits.
func (s *Server) harden(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hd := w.Header()
		hd.Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'")
		hd.Set("X-Frame-Options", "DENY")
		hd.Set("Referrer-Policy", "no-referrer")
		hd.Set("X-Content-Type-Options", "nosniff")
		hd.Set("Cache-Control", "no-store")
		if s.cfg.TLS != nil {
			hd.Set("Strict-Transport-Security", "max-age=31536000")
		}
		if !s.lim.allow(clientHost(r)) {
			http.Error(w, "too many requests: slow down and retry", http.StatusTooManyRequests)
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, maxBody)
		h.ServeHTTP(w, r)
	})
}

// clientHost is the rate limit's key of a request: its IPv4 address, or
// the /64 of its IPv6 address (one host commonly holds a whole /64, so
// per-address keys would give it 2^64 buckets).
func clientHost(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	return limitKey(host)
}

func limitKey(host string) string {
	a, err := netip.ParseAddr(host)
	if err != nil {
		return strings.ToLower(host)
	}
	a = a.Unmap()
	if a.Is4() {
		return a.String()
	}
	p, _ := a.WithZone("").Prefix(64)
	return p.String()
}

// maxClients bounds the limiter's map: beyond it, new clients share one
// bucket (overflowKey) until the idle ones are forgotten, so a flood of
// addresses can neither grow the map nor escape the rate.
const (
	maxClients  = 10000
	overflowKey = "overflow"
)

// limiter is a token bucket per client address (x/time/rate), forgotten
// after a few idle minutes.
type limiter struct {
	rate  rate.Limit
	burst int
	mu    sync.Mutex
	m     map[string]*client
	max   int // entries of m, beyond which new clients share overflowKey's bucket
	sweep time.Time
}

type client struct {
	lim  *rate.Limiter
	last time.Time
}

func newLimiter(perSecond float64, burst int) *limiter {
	if perSecond <= 0 {
		perSecond = 20
	}
	if burst <= 0 {
		burst = 100
	}
	return &limiter{rate: rate.Limit(perSecond), burst: burst, m: map[string]*client{}, max: maxClients}
}

func (l *limiter) allow(key string) bool {
	now := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	if now.Sub(l.sweep) > time.Minute {
		for k, c := range l.m {
			if now.Sub(c.last) > 5*time.Minute {
				delete(l.m, k)
			}
		}
		l.sweep = now
	}
	c := l.m[key]
	if c == nil && len(l.m) >= l.max {
		key = overflowKey
		c = l.m[key]
	}
	if c == nil {
		c = &client{lim: rate.NewLimiter(l.rate, l.burst)}
		l.m[key] = c
	}
	c.last = now
	return c.lim.AllowN(now, 1)
}
