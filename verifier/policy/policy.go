// Package policy maps workloads and people to NATS permissions: bindings
// grant roles to a workload by its host's roles and tags and its name, the
// people section's bindings grant roles to a person by their identity
// provider's groups, and roles say which subjects a session may publish and
// subscribe to ({{host}}, {{workload}}, {{credential}} and {{person}}
// expanded per session). The people section also names the identity
// providers the verifier logs people in with. Source re-reads the policy
// file when it changes; a file that fails to parse keeps the last good
// policy.
package policy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/jwt/v2"
	"go.yaml.in/yaml/v3"
)

// Policy maps workloads to NATS permissions: bindings grant roles to a
// workload according to its host's roles and tags and its name; roles say
// which subjects may be published and subscribed. Subjects may use the
// templates {{host}}, {{workload}} and {{credential}}.
type Policy struct {
	SessionTTL time.Duration   `yaml:"session_ttl"`
	Roles      map[string]Role `yaml:"roles"`
	Bindings   []Binding       `yaml:"bindings"`
	// People is the people: section (nil: nobody logs in).
	People *People `yaml:"people"`
}

// Role is a set of permissions.
type Role struct {
	Publish   Subjects  `yaml:"publish"`
	Subscribe Subjects  `yaml:"subscribe"`
	Response  *Response `yaml:"response"`
	Limits    *Limits   `yaml:"limits"`
	// Admin are the operator API operations the role may call (api.AdminOps;
	// "*" for all, "read" for api.AdminReadOps): people who operate the
	// fleet, from their IdP groups, instead of the operator key file.
	Admin []string `yaml:"admin"`
	// AllowSynced, when false, refuses the role to a synced passkey (and
	// the session keys it certifies): a passkey copied to other devices by
	// a provider is not one device (default true).
	AllowSynced *bool `yaml:"allow_synced"`
	// PerConnect is how a browser signs a connect with this role:
	// PerConnectSessionKey (default: a WebCrypto key a passkey certified at
	// login signs silently) or PerConnectPasskey (a passkey ceremony on
	// every connect, for admin roles).
	PerConnect string `yaml:"per_connect"`
}

// How a browser signs its connects (Role.PerConnect).
const (
	PerConnectSessionKey = "session_key"
	PerConnectPasskey    = "passkey"
)

// Subjects are allow and deny lists (deny wins, as in nats-server).
type Subjects struct {
	Allow []string `yaml:"allow"`
	Deny  []string `yaml:"deny"`
}

// Response lets a workload reply to requests it received.
type Response struct {
	MaxMsgs int           `yaml:"max_msgs"`
	Expires time.Duration `yaml:"expires"`
}

// Limits bound a session; zero means no limit.
type Limits struct {
	Subs    int64 `yaml:"subs"`
	Payload int64 `yaml:"payload"`
	Data    int64 `yaml:"data"`
}

// Binding grants Roles to workloads whose host has any of HostRoles (or any
// host, if empty) and all of HostTags, and whose name is in Workloads ("*"
// for any; empty means any).
type Binding struct {
	HostRoles []string `yaml:"host_roles"`
	HostTags  []string `yaml:"host_tags"`
	Workloads []string `yaml:"workloads"`
	Roles     []string `yaml:"roles"`
}

// DefaultSessionTTL is how long a workload session lasts before the client
// reconnects and the TPM signs a fresh nonce.
const DefaultSessionTTL = 10 * time.Minute

// Parse decodes a YAML policy strictly and checks that every binding
// names defined roles.
func Parse(b []byte) (*Policy, error) {
	var p Policy
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&p); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("policy: %w", err)
	}
	if p.SessionTTL == 0 {
		p.SessionTTL = DefaultSessionTTL
	}
	var errs []error
	if p.SessionTTL < time.Second || p.SessionTTL > 24*time.Hour {
		errs = append(errs, fmt.Errorf("policy: session_ttl %v: between 1s and 24h", p.SessionTTL))
	}
	if p.People != nil {
		p.People.setDefaults()
		errs = append(errs, p.People.validate(p.Roles)...)
	}
	for i, b := range p.Bindings {
		for _, r := range b.Roles {
			if _, ok := p.Roles[r]; !ok {
				errs = append(errs, fmt.Errorf("policy: bindings[%d]: role %q is not defined under roles", i, r))
			}
		}
	}
	for name, r := range p.Roles {
		errs = append(errs, r.validateAdmin(name)...)
		errs = append(errs, r.validateReserved(name)...)
		if r.PerConnect != "" && r.PerConnect != PerConnectSessionKey && r.PerConnect != PerConnectPasskey {
			errs = append(errs, fmt.Errorf("policy: role %s: per_connect %q: want session_key or passkey", name, r.PerConnect))
		}
		for _, s := range slices.Concat(r.Publish.Allow, r.Publish.Deny, r.Subscribe.Allow, r.Subscribe.Deny) {
			if s == "" || strings.ContainsAny(s, " \t\r\n") {
				errs = append(errs, fmt.Errorf("policy: role %s: bad subject %q", name, s))
			}
		}
		errs = append(errs, r.validateInboxes(name)...)
	}
	return &p, errors.Join(errs...)
}

// subjectMatches reports whether the NATS subject pattern (with * and >)
// matches the literal subject.
func subjectMatches(pattern, subject string) bool {
	pt, st := strings.Split(pattern, "."), strings.Split(subject, ".")
	for i, p := range pt {
		switch {
		case p == ">":
			return len(st) > i
		case i >= len(st):
			return false
		case p != "*" && p != st[i]:
			return false
		}
	}
	return len(pt) == len(st)
}

// Subject is who a session is for.
type Subject struct {
	HostID, Hostname string
	HostRoles        []string
	HostTags         []string
	Workload         string
	CredentialID     string
	// Person is a person's ID (record.PersonID: IDP_hash), for {{person}}.
	Person string
	// Inbox is the session's inbox prefix (api.InboxFor…): the one place it
	// may receive replies.
	Inbox string
}

// RolesFor returns the roles the bindings grant, sorted and unique.
func (p *Policy) RolesFor(s Subject) []string {
	var out []string
	for _, b := range p.Bindings {
		if len(b.HostRoles) > 0 && !slices.ContainsFunc(b.HostRoles, func(r string) bool { return slices.Contains(s.HostRoles, r) }) {
			continue
		}
		if !containsAll(s.HostTags, b.HostTags) {
			continue
		}
		if len(b.Workloads) > 0 && !slices.Contains(b.Workloads, "*") && !slices.Contains(b.Workloads, s.Workload) {
			continue
		}
		out = append(out, b.Roles...)
	}
	slices.Sort(out)
	return slices.Compact(out)
}

func containsAll(have, want []string) bool {
	for _, w := range want {
		if !slices.Contains(have, w) {
			return false
		}
	}
	return true
}

// Apply writes the permissions of roles into uc, templates expanded. A
// template value is a single subject token (IDs and workload names contain
// no dots or wildcards), so it cannot widen a subject.
func (p *Policy) Apply(uc *jwt.UserClaims, roles []string, s Subject) {
	expand := func(in []string) []string {
		out := make([]string, 0, len(in))
		for _, x := range in {
			// A template whose value this session lacks ({{person}} in a
			// workload's session, {{host}} in a browser's) would leave an
			// empty token: the subject is left out rather than guessed.
			if !lacksValue(x, s) {
				out = append(out, expandPlaceholders(x, s))
			}
		}
		return out
	}
	answers := false
	for _, name := range roles {
		role := p.Roles[name]
		uc.Pub.Allow.Add(expand(role.Publish.Allow)...)
		uc.Pub.Deny.Add(expand(role.Publish.Deny)...)
		uc.Sub.Allow.Add(expand(role.Subscribe.Allow)...)
		uc.Sub.Deny.Add(expand(role.Subscribe.Deny)...)
		if role.Response != nil {
			answers = true
		}
		if l := role.Limits; l != nil {
			if l.Subs > 0 {
				uc.Limits.Subs = l.Subs
			}
			if l.Payload > 0 {
				uc.Limits.Payload = l.Payload
			}
			if l.Data > 0 {
				uc.Limits.Data = l.Data
			}
		}
	}
	p.applyAdmin(uc, roles, s)
	applyAnswers(uc, answers)
	denyReserved(uc)
	// Replies to its own requests, under its own inbox prefix only: with
	// _INBOX.> it could read every other session's replies.
	if s.Inbox != "" {
		uc.Sub.Allow.Add(s.Inbox + ".>")
	}
}

// lacksValue reports whether x uses a placeholder whose value s lacks.
func lacksValue(x string, s Subject) bool {
	if !strings.Contains(x, "{{") {
		return false
	}
	for _, ph := range [...]struct{ key, val string }{{"{{host}}", s.HostID}, {"{{workload}}", s.Workload}, {"{{credential}}", s.CredentialID}, {"{{person}}", s.Person}} {
		if ph.val == "" && strings.Contains(x, ph.key) {
			return true
		}
	}
	return false
}

// expandPlaceholders replaces {{host}}, {{workload}}, {{credential}} and
// {{person}} in
// one pass, left to right, as a strings.Replacer would (a value is never
// scanned again), without building one per connect (~5 µs of a decision).
// Most subjects hold no placeholder and are returned as they are.
func expandPlaceholders(x string, s Subject) string {
	if !strings.Contains(x, "{{") {
		return x
	}
	phs := [...]struct{ key, val string }{{"{{host}}", s.HostID}, {"{{workload}}", s.Workload}, {"{{credential}}", s.CredentialID}, {"{{person}}", s.Person}}
	var b strings.Builder
next:
	for i := 0; i < len(x); {
		if x[i] == '{' {
			for _, ph := range phs {
				if strings.HasPrefix(x[i:], ph.key) {
					b.WriteString(ph.val)
					i += len(ph.key)
					continue next
				}
			}
		}
		b.WriteByte(x[i])
		i++
	}
	return b.String()
}

// Source reloads the policy file when it changes, checking at most
// once a second, so a change applies to new sessions without a restart. A
// policy that fails to parse is logged and the last good one stays.
type Source struct {
	path  string
	mu    sync.Mutex
	cur   *Policy
	mod   time.Time
	next  time.Time
	onErr func(error)
	// lastErr is the last reload's failure (nil once one succeeds).
	lastErr error
	// hooks are told of each policy loaded after the first (OnReload).
	hooks []func(prev, p *Policy)
	// inflight counts the decisions holding each policy (Acquire).
	inflight map[*Policy]int
}

// OnReload has f told of each policy loaded after the first (a changed
// file that parsed), with the one it replaces. f runs on the reloading
// call's goroutine (a connect's): it must not block.
func (ps *Source) OnReload(f func(prev, p *Policy)) {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	ps.hooks = append(ps.hooks, f)
}

// NewSource loads the policy at path (empty: a policy that grants nothing)
// and reports reload failures to onErr.
func NewSource(path string, onErr func(error)) (*Source, error) {
	ps := &Source{path: path, onErr: onErr}
	if path == "" {
		ps.cur = &Policy{SessionTTL: DefaultSessionTTL}
		return ps, nil
	}
	if err := ps.reload(); err != nil {
		return nil, err
	}
	return ps, nil
}

func (ps *Source) reload() error {
	fi, err := os.Stat(ps.path)
	if err != nil {
		return fmt.Errorf("policy: %w", err)
	}
	if ps.cur != nil && fi.ModTime().Equal(ps.mod) {
		return nil
	}
	b, err := os.ReadFile(ps.path)
	if err != nil {
		return fmt.Errorf("policy: %w", err)
	}
	p, err := Parse(b)
	if err != nil {
		return fmt.Errorf("%s: %w", ps.path, err)
	}
	prev := ps.cur
	ps.cur, ps.mod = p, fi.ModTime()
	if prev != nil {
		for _, f := range ps.hooks {
			f(prev, p)
		}
	}
	return nil
}

// Summary is what a log line says of a policy: its roles, bindings and
// identity providers.
func (p *Policy) Summary() []any {
	idps := 0
	if p.People != nil {
		idps = len(p.People.IdPs)
	}
	return []any{"roles", len(p.Roles), "bindings", len(p.Bindings), "idps", idps, "session_ttl", p.SessionTTL}
}

// State is the policy file, when the policy in force was written, and the
// last reload's failure (nil: the file in force is the file on disk).
func (ps *Source) State() (path string, modified time.Time, err error) {
	ps.Current() // a reload if one is due
	ps.mu.Lock()
	defer ps.mu.Unlock()
	return ps.path, ps.mod, ps.lastErr
}

// Current returns the policy in force.
func (ps *Source) Current() *Policy {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	return ps.currentLocked()
}

// Acquire returns the policy in force and holds it until release, which
// must be called once: a decision holds the policy it grants with until
// its record is written, and a reload's kick waits for the decisions that
// hold the policy it replaced (Drain), so none of them commits a grant
// after the kick has read the sessions.
func (ps *Source) Acquire() (p *Policy, release func()) {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	p = ps.currentLocked()
	if ps.inflight == nil {
		ps.inflight = map[*Policy]int{}
	}
	ps.inflight[p]++
	var once sync.Once
	return p, func() {
		once.Do(func() {
			ps.mu.Lock()
			defer ps.mu.Unlock()
			if ps.inflight[p]--; ps.inflight[p] <= 0 {
				delete(ps.inflight, p)
			}
		})
	}
}

// drainPoll is how often Drain looks again.
const drainPoll = 5 * time.Millisecond

// Drain waits until no decision holds p (Acquire), or ctx ends. Once p is
// replaced nothing acquires it again, so the wait is bounded by the
// decisions under way (their callout's deadline, about 2 s).
func (ps *Source) Drain(ctx context.Context, p *Policy) error {
	for {
		ps.mu.Lock()
		n := ps.inflight[p]
		ps.mu.Unlock()
		if n == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("policy: %d decisions still hold the policy replaced: %w", n, ctx.Err())
		case <-time.After(drainPoll):
		}
	}
}

func (ps *Source) currentLocked() *Policy {
	if ps.path != "" && time.Now().After(ps.next) {
		ps.next = time.Now().Add(time.Second)
		err := ps.reload()
		ps.lastErr = err
		if err != nil && ps.onErr != nil {
			ps.onErr(err)
		}
	}
	return ps.cur
}
