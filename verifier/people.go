package verifier

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/verifier/alert"
	"github.com/tpmauthn/tpmauthn/verifier/authn/person"
	"github.com/tpmauthn/tpmauthn/verifier/fleet"
	"github.com/tpmauthn/tpmauthn/verifier/httpapi"
	"github.com/tpmauthn/tpmauthn/verifier/keys"
	"github.com/tpmauthn/tpmauthn/verifier/offboard"
	"github.com/tpmauthn/tpmauthn/verifier/oidclogin"
	"github.com/tpmauthn/tpmauthn/verifier/passkey"
	"github.com/tpmauthn/tpmauthn/verifier/people"
	"github.com/tpmauthn/tpmauthn/verifier/policy"
	"github.com/tpmauthn/tpmauthn/verifier/record"
	"github.com/tpmauthn/tpmauthn/verifier/scim"
	"github.com/tpmauthn/tpmauthn/verifier/softkey"
)

// openPeople keeps the people (verifier/people: their logins' grants are
// redeemed by registration, their credentials checked by the callout) and
// their offboarding (verifier/offboard), before the operator API that uses
// both.
func (v *Verifier) openPeople(context.Context) error {
	pol := func() *policy.Policy { return v.policy.Current() }
	// The refresh-token key comes from the issuer's seed: every instance of
	// the fleet holds the same (keys.Shared) and it never leaves the data
	// directory, so any instance opens what another sealed, and a backup of
	// the buckets alone does not (HKDF with its own info string: the
	// derived key is good for nothing else).
	seed, err := v.keys.Issuer.Seed()
	if err != nil {
		return fmt.Errorf("refresh-token key: %w", err)
	}
	sealer, err := people.NewSealer(seed)
	if err != nil {
		return err
	}
	v.people = people.New(people.Config{Store: v.st, Policy: pol, Trail: v.trail, Logger: v.log, Now: v.cfg.Clock, Sealer: sealer,
		// A login whose ID token lists fewer groups kicks what they lost
		// (v.offboard is set below, before any login is served).
		GroupsChanged: func(ctx context.Context, before, after *record.Person) {
			if _, err := v.offboard.Regrouped(ctx, before, after, "login"); err != nil {
				v.log.Warn("a login changed a person's groups; not every session they lost roles in was kicked", "person", after.ID, "error", err)
			}
		}})
	v.offboard = offboard.New(offboard.Config{People: v.people, Store: v.st, Fleet: v.fleet, Sessions: v.sessions,
		Alerts: alert.NewPublisher(v.nc, v.trail, v.metrics, v.log), Trail: v.trail, Policy: pol, Logger: v.log})
	v.onClose(v.offboard.Close)
	// A reload that takes people's roles away kicks their sessions (in the
	// background: the reload runs in a connect's call).
	var (
		mu      sync.Mutex
		closed  bool
		reloads sync.WaitGroup
	)
	v.onClose(func() {
		mu.Lock()
		closed = true // no reload starts a kick after this
		mu.Unlock()
		reloads.Wait()
	})
	v.policy.OnReload(func(prev, next *policy.Policy) {
		// A regroup from now on counts prev's roles too, until the
		// sessions it granted are over (the kick below reads groups
		// a regroup may change meanwhile).
		v.offboard.PolicyReplaced(prev, time.Now())
		mu.Lock()
		defer mu.Unlock()
		if closed {
			return
		}
		reloads.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			// A decision made with prev may still commit its session:
			// the kick reads the sessions once they all have.
			dctx, dcancel := context.WithTimeout(ctx, 10*time.Second)
			err := v.policy.Drain(dctx, prev)
			dcancel()
			if err != nil {
				v.log.Warn("policy reload: decisions with the previous policy still under way; kicking all the same", "error", err)
			}
			n, err := v.offboard.Repolicy(ctx, prev, next)
			switch {
			case err != nil:
				v.log.Error("policy reload: kicking sessions whose roles it took away", "kicked", n, "error", err)
			case n > 0:
				v.log.Info("policy reload took people's roles away: their sessions kicked", "kicked", n)
			}
		})
	})
	v.startFenceSweep()
	dir, err := person.Start(context.Background(), v.st.People)
	if err != nil {
		return err
	}
	v.personDir = dir
	v.onClose(dir.Close)
	return nil
}

// listenHTTP, with an HTTP listener configured, opens it (before the
// NATS server: the WebSocket listener admits the pages' origin, which the
// listener's address decides); servePeople serves it.
func (v *Verifier) listenHTTP(context.Context) error {
	if v.cfg.HTTPListen == "" {
		return nil
	}
	tlsCfg, err := v.httpTLSConfig()
	if err != nil {
		return err
	}
	srv, err := httpapi.Listen(httpapi.Config{Listen: v.cfg.HTTPListen, TLS: tlsCfg, Logger: v.log})
	if err != nil {
		return err
	}
	v.http, v.httpURL, v.httpTLS = srv, cmp.Or(v.cfg.HTTPPublicURL, srv.URL()), tlsCfg != nil
	v.onClose(srv.Close)
	return nil
}

// heldTokensFile, in the data directory, keeps refresh tokens an IdP
// rotated that the store has not taken yet (oidclogin.Config.HeldFile).
const heldTokensFile = "held-refresh-tokens.json"

// servePeople, with an HTTP listener, serves the people's logins
// (verifier/oidclogin), the IdPs' SCIM (verifier/scim), passkeys and the
// browser client (verifier/passkey) and the console (verifier/console) on
// it, and runs the periodic re-check.
func (v *Verifier) servePeople(context.Context) error {
	pol := func() *policy.Policy { return v.policy.Current() }
	if v.http == nil {
		return nil
	}
	srv, public := v.http, v.httpURL
	mux := http.NewServeMux()
	var pk *passkey.Handler
	login := oidclogin.New(oidclogin.Config{People: v.people, Store: v.st, Policy: pol, PublicURL: public, Secure: v.httpTLS,
		DevicePoll: v.cfg.DevicePoll, OnBrowserLogin: v.browserLogin(&pk), Logger: v.log, Now: v.cfg.Clock, Offboard: v.offboard,
		HeldFile: filepath.Join(v.cfg.DataDir, heldTokensFile), Sealer: v.people.Sealer(), HostName: v.activeHostName})
	if err := v.serveBrowsers(mux, login, &pk); err != nil {
		login.Close()
		return err
	}
	login.Register(mux)
	softkey.New(softkey.Config{People: v.people, RPID: v.cfg.RPID, NATSURL: v.ClientURL(), Trail: v.trail, Logger: v.log}).Register(mux)
	v.offboard.SetRevoker(login)
	sc, err := scim.New(scim.Config{People: v.people, Offboard: v.offboard, Store: v.st, Policy: pol, Logger: v.log, Now: v.cfg.Clock})
	if err != nil {
		login.Close()
		return err
	}
	sc.Register(mux)
	srv.Serve(mux)
	v.login = login
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		login.RunRecheck(ctx)
	}()
	v.onClose(func() {
		stop()
		<-done
		srv.Close() // before what its handlers use (again at the end: a no-op)
		login.Close()
	})
	v.log.Info("people's logins", "url", public+"/login/", "listen", srv.Addr())
	// For tpmauthnctl --data-dir login on this host (public, like the
	// client URL file).
	if err := os.WriteFile(keys.LoginURLFile(v.cfg.DataDir), []byte(public+"\n"), 0o644); err != nil {
		v.log.Warn("cannot record the login URL for tpmauthnctl", "error", err)
	}
	return nil
}

// httpTLSConfig is the HTTP listener's TLS (nil: plain, on loopback): the
// operator's certificate, or one from the NATS CA naming the public URL's
// host, the listen address and this host.
func (v *Verifier) httpTLSConfig() (*tls.Config, error) {
	if !v.cfg.httpTLS() {
		return nil, nil
	}
	cert, key := v.cfg.HTTPTLSCert, v.cfg.HTTPTLSKey
	if cert == "" {
		var err error
		if cert, key, err = keys.HTTPServerCert(v.cfg.DataDir, v.keys, v.httpHosts(), time.Now()); err != nil {
			return nil, err
		}
	}
	pair, err := tls.LoadX509KeyPair(cert, key)
	if err != nil {
		return nil, err
	}
	return &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12}, nil
}

func (v *Verifier) httpHosts() []string {
	hosts := []string{"localhost", "127.0.0.1", "::1"}
	if name, err := os.Hostname(); err == nil && name != "" {
		hosts = append(hosts, name)
	}
	if h, _, err := net.SplitHostPort(v.cfg.HTTPListen); err == nil && h != "" && !net.ParseIP(h).IsUnspecified() {
		hosts = append(hosts, h)
	}
	if u, err := url.Parse(v.cfg.HTTPPublicURL); err == nil && u.Hostname() != "" {
		hosts = append(hosts, u.Hostname())
	}
	return hosts
}

// HTTPURL is where people log in ("" without an HTTP listener).
func (v *Verifier) HTTPURL() string { return v.httpURL }

// People is the verifier's people service (set by Start).
func (v *Verifier) People() *people.Service { return v.people }

// fenceSweepEvery is how often the verifier finishes regroups left
// unfinished (offboard.FinishFences).
const fenceSweepEvery = time.Minute

// startFenceSweep runs offboard.FinishFences every fenceSweepEvery until
// the verifier closes.
func (v *Verifier) startFenceSweep() {
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(fenceSweepEvery)
		defer t.Stop()
		for {
			select {
			case now := <-t.C:
				sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
				n, err := v.offboard.FinishFences(sctx, now)
				cancel()
				switch {
				case err != nil:
					v.log.Warn("fence sweep: a regroup left unfinished is still not done", "kicked", n, "error", err)
				case n > 0:
					v.log.Info("fence sweep: finished a regroup left unfinished", "kicked", n)
				}
			case <-ctx.Done():
				return
			}
		}
	}()
	v.onClose(func() { stop(); <-done })
}

// RecheckPeople runs one pass of the periodic re-check now (tests, and
// an operator who does not want to wait); nothing without an HTTP
// listener.
func (v *Verifier) RecheckPeople(ctx context.Context) {
	if v.login != nil {
		v.login.Recheck(ctx)
	}
}

// activeHostName is an active host's hostname, for the login pages: a
// login bound to a host must name one of the fleet. The pages ask before
// anyone has logged in, so a host ID found in vain is remembered for a
// while (fleet.Misses): probing made-up IDs costs the store nothing.
func (v *Verifier) activeHostName(ctx context.Context, id string) (string, error) {
	if v.fleet.Misses.Missed(fleet.HostMiss(id)) {
		return "", fmt.Errorf("%w: host %q (looked up in vain just now)", api.ErrNotFound, id)
	}
	h, err := v.fleet.ActiveHost(ctx, id)
	if errors.Is(err, api.ErrNotFound) {
		v.fleet.Misses.Miss(fleet.HostMiss(id))
	}
	if err != nil {
		return "", err
	}
	return h.Hostname, nil
}
