// Command workload is an example tpmauthn workload: it connects to NATS with
// its host's TPM through the agent (no secret on disk), publishes and
// receives a message under its role, and can show a refused publish.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tpmauthn/tpmauthn/agent/client"
)

func main() {
	socket := flag.String("socket", client.DefaultSocket, "the tpmauthn agent's socket")
	url := flag.String("nats-url", "nats://127.0.0.1:4222", "NATS server")
	subject := flag.String("subject", "demo.greetings", "subject to publish and subscribe on")
	forbidden := flag.String("forbidden", "", "also publish here and report the server's refusal")
	replay := flag.Bool("replay", false, "also replay this connection's signature on a new connection and report the refusal")
	hold := flag.Duration("hold", 0, "then keep the connection open this long, reporting if the server drops it")
	flag.Parse()
	if err := run(*socket, *url, *subject, *forbidden, *replay, *hold); err != nil {
		fmt.Fprintln(os.Stderr, "workload:", err)
		os.Exit(1)
	}
}

func run(socket, url, subject, forbidden string, replay bool, hold time.Duration) error {
	who, err := client.New(socket).WhoAmI(context.Background())
	if err != nil {
		return err
	}
	name := who.Workload
	if who.Person != "" {
		name = "person " + who.Person // a person's login credential (tpmauthnctl login)
	}
	fmt.Printf("agent says: %s on host %s, credential %s\n", name, who.Host, who.CredentialID)
	tpmOpts, err := client.NATSOptions(socket)
	if err != nil {
		return err
	}
	// The closed handler goes before client.NATSOptions, which wraps it
	// so that closing the connection ends a reconnect's wait for a turn.
	closed := make(chan struct{})
	opts := append([]nats.Option{nats.ClosedHandler(func(*nats.Conn) { close(closed) })}, tpmOpts...)
	violations := make(chan error, 4)
	opts = append(opts, nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
		select {
		case violations <- err:
		default:
		}
	}))
	rec := &recorder{}
	if replay {
		opts = append(opts, rec.wrap(opts))
	}
	opts = append(opts,
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if hold > 0 {
				fmt.Printf("connection dropped by the server at unix_ms=%d (%v); reconnecting...\n", time.Now().UnixMilli(), err)
			}
		}))
	start := time.Now()
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer nc.Close()
	fmt.Printf("connected to NATS in %v as %s (TPM-signed nonce, verified by auth callout)\n", time.Since(start).Round(time.Millisecond), name)
	sub, err := nc.SubscribeSync(subject)
	if err != nil {
		return err
	}
	msg := fmt.Sprintf("hello from %s@%s", name, who.Host)
	if err := nc.Publish(subject, []byte(msg)); err != nil {
		return err
	}
	m, err := sub.NextMsg(5 * time.Second)
	if err != nil {
		return fmt.Errorf("receive on %s: %w", subject, err)
	}
	fmt.Printf("published and received on %s: %q\n", subject, m.Data)
	if replay {
		if err := replaySig(url, who.CredentialID, rec.sig); err != nil {
			return err
		}
	}
	if forbidden != "" {
		if err := refused(nc, forbidden, violations); err != nil {
			return err
		}
	}
	if hold > 0 {
		fmt.Printf("holding the connection open for %v\n", hold)
		select {
		case <-closed:
			fmt.Printf("connection closed: the server refused to re-authorize this workload (%v)\n", nc.LastError())
		case <-time.After(hold):
			fmt.Println("held the connection to the end")
		}
	}
	return nil
}

// refused publishes outside the role and waits for the server's refusal.
func refused(nc *nats.Conn, forbidden string, violations chan error) error {
	if err := nc.Publish(forbidden, []byte("should be refused")); err != nil {
		return err
	}
	_ = nc.Flush()
	select {
	case err := <-violations:
		if !strings.Contains(err.Error(), "Permissions Violation") {
			return fmt.Errorf("unexpected error: %w", err)
		}
		fmt.Printf("publish to %s refused by the server: %v\n", forbidden, err)
		return nil
	case <-time.After(3 * time.Second):
		return errors.New("publish outside the role was not refused")
	}
}

// recorder keeps the signature the agent produced for this connection.
type recorder struct{ sig []byte }

// wrap returns an option that re-installs the Nkey signer of opts with one
// that records what it returns.
func (r *recorder) wrap(opts []nats.Option) nats.Option {
	var o nats.Options
	for _, opt := range opts {
		_ = opt(&o)
	}
	inner, nkey := o.SignatureCB, o.Nkey
	return nats.Nkey(nkey, func(nonce []byte) ([]byte, error) {
		sig, err := inner(nonce)
		r.sig = append([]byte(nil), sig...)
		return sig, err
	})
}

// replaySig connects again presenting the recorded signature: the new
// connection has a new nonce, so the verifier must refuse it.
func replaySig(url, nkey string, sig []byte) error {
	_, err := nats.Connect(url, nats.Nkey(nkey, func([]byte) ([]byte, error) { return sig, nil }),
		nats.MaxReconnects(0), nats.Timeout(5*time.Second))
	if err == nil {
		return errors.New("a replayed signature was accepted")
	}
	if !errors.Is(err, nats.ErrAuthorization) {
		return fmt.Errorf("replay: unexpected error: %w", err)
	}
	fmt.Printf("replayed signature on a new connection refused: %v\n", err)
	return nil
}
