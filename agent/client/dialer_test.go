package client

import (
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/tpmauthn/tpmauthn/internal/natstls"
	"github.com/tpmauthn/tpmauthn/internal/pemca"
)

// Each dial closes the socket the previous one left behind, and options
// shared between connections give each its own dialer.
func TestCloseFailedHandshakes(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	accepted := make(chan net.Conn, 4)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	var a, b nats.Options
	opt := CloseFailedHandshakes()
	if err := opt(&a); err != nil {
		t.Fatal(err)
	}
	if err := opt(&b); err != nil {
		t.Fatal(err)
	}
	if a.CustomDialer == b.CustomDialer {
		t.Fatal("two connections share one dialer: one would close the other's socket")
	}
	first, err := a.CustomDialer.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	srvFirst := <-accepted
	other, err := b.CustomDialer.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	<-accepted
	if _, err := a.CustomDialer.Dial("tcp", l.Addr().String()); err != nil {
		t.Fatal(err)
	}
	if _, err := first.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("the first socket is still open after a second dial: %v", err)
	}
	_ = srvFirst.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := srvFirst.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Fatalf("the server side sees %v, want EOF", err)
	}
	if _, err := other.Write([]byte("x")); err != nil {
		t.Fatalf("the other connection's socket was closed: %v", err)
	}
}

func TestReconnectDelay(t *testing.T) {
	for _, c := range []struct {
		attempt  int
		min, max time.Duration
	}{
		{1, time.Second, 2 * time.Second},
		{2, 2 * time.Second, 4 * time.Second},
		{3, 4 * time.Second, 8 * time.Second},
		{4, 8 * time.Second, 16 * time.Second},
		{50, 8 * time.Second, 16 * time.Second},
	} {
		for range 200 {
			if d := ReconnectDelay(c.attempt); d < c.min || d >= c.max {
				t.Fatalf("attempt %d: %v outside [%v, %v)", c.attempt, d, c.min, c.max)
			}
		}
	}
}

// The workload verifies the server as its agent does: with the agent's NATS
// CA, and TLS required when the agent's URL is beyond loopback.
func TestTLSOption(t *testing.T) {
	ca, _, err := pemca.New("test NATS CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		who    WhoAmI
		secure bool
		roots  bool
	}{
		{"loopback, no CA", WhoAmI{}, false, false},
		{"loopback, CA", WhoAmI{NATSCA: string(natstls.EncodePEM(ca))}, false, true},
		{"beyond loopback", WhoAmI{NATSCA: string(natstls.EncodePEM(ca)), NATSTLSRequired: true}, true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			opt, err := tlsOption(&tc.who)
			if err != nil {
				t.Fatal(err)
			}
			o := nats.GetDefaultOptions()
			if err := opt(&o); err != nil {
				t.Fatal(err)
			}
			if o.Secure != tc.secure || o.TLSConfig == nil || (o.TLSConfig.RootCAs != nil) != tc.roots {
				t.Fatalf("Secure %v, roots %v; want %v, %v", o.Secure, o.TLSConfig.RootCAs != nil, tc.secure, tc.roots)
			}
		})
	}
	if _, err := tlsOption(&WhoAmI{NATSCA: "not PEM"}); err == nil {
		t.Fatal("a malformed CA from the agent was accepted")
	}
}
