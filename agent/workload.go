package agent

import (
	"errors"
	"fmt"
	"regexp"

	"github.com/tpmauthn/tpmauthn/api"
)

// Workload names a local caller by selectors.
type Workload struct {
	Name  string   `mapstructure:"name" json:"name"`
	Match Selector `mapstructure:"match" json:"match"`
}

// Selector: every field that is set must match the caller. A selector with
// no field set matches nothing.
type Selector struct {
	UID         *uint32 `mapstructure:"uid" json:"uid,omitempty"`
	GID         *uint32 `mapstructure:"gid" json:"gid,omitempty"`
	User        string  `mapstructure:"user" json:"user,omitempty"`
	Group       string  `mapstructure:"group" json:"group,omitempty"`
	Exe         string  `mapstructure:"exe" json:"exe,omitempty"`
	ExeSHA256   string  `mapstructure:"exe_sha256" json:"exe_sha256,omitempty"`
	SystemdUnit string  `mapstructure:"systemd_unit" json:"systemd_unit,omitempty"`
}

// anchored reports whether s names the caller by something it cannot change
// after connect(): a system unit's cgroup, its uid or gid. The executable is
// not: a process can connect, hand the socket to a child and exec the named
// program, keeping its pid (DESIGN.md: an executable is an extra condition,
// never a boundary within one uid).
func (s Selector) anchored() bool {
	return s.UID != nil || s.GID != nil || s.User != "" || s.Group != "" || s.SystemdUnit != ""
}

func (s Selector) empty() bool {
	return s.UID == nil && s.GID == nil && s.User == "" && s.Group == "" && s.Exe == "" && s.ExeSHA256 == "" && s.SystemdUnit == ""
}

// Matches reports whether p satisfies every field set in s.
func (s Selector) Matches(p *Peer) bool {
	if s.empty() {
		return false
	}
	checks := []struct {
		set bool
		ok  bool
	}{
		{s.UID != nil, s.UID != nil && *s.UID == p.UID},
		{s.GID != nil, s.GID != nil && *s.GID == p.GID},
		{s.User != "", s.User == p.User},
		{s.Group != "", s.Group == p.Group},
		{s.Exe != "", p.Exe != "" && s.Exe == p.Exe},
		{s.ExeSHA256 != "", p.ExeSHA256 != "" && s.ExeSHA256 == p.ExeSHA256},
		{s.SystemdUnit != "", p.SystemdUnit != "" && s.SystemdUnit == p.SystemdUnit},
	}
	for _, c := range checks {
		if c.set && !c.ok {
			return false
		}
	}
	return true
}

var workloadNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$`)

// agentWorkload is the reserved name of the agent's own host credential.
const agentWorkload = api.AgentWorkload

// ErrUnknownCaller: no configured workload matches the caller.
var ErrUnknownCaller = errors.New("agent: no workload matches this caller")

// validateWorkloads checks names and selectors.
func validateWorkloads(ws []Workload) error {
	var errs []error
	seen := map[string]bool{}
	for i, w := range ws {
		switch {
		case !workloadNameRE.MatchString(w.Name):
			errs = append(errs, fmt.Errorf("workloads[%d]: name %q: letters, digits, '-' and '_' (at most 63)", i, w.Name))
		case w.Name == agentWorkload:
			errs = append(errs, fmt.Errorf("workloads[%d]: name %q is reserved for the agent itself", i, w.Name))
		case seen[w.Name]:
			errs = append(errs, fmt.Errorf("workloads[%d]: name %q appears twice", i, w.Name))
		}
		seen[w.Name] = true
		switch {
		case w.Match.empty():
			errs = append(errs, fmt.Errorf("workloads[%d] (%s): match needs at least one of uid, gid, user, group, systemd_unit (exe and exe_sha256 may narrow them)", i, w.Name))
		case !w.Match.anchored():
			errs = append(errs, fmt.Errorf("workloads[%d] (%s): exe and exe_sha256 only narrow a selector, they cannot name a caller alone: "+
				"a process can connect and then exec the named program; add systemd_unit (strongest), uid or user, or gid or group", i, w.Name))
		}
	}
	return errors.Join(errs...)
}

// resolve returns the first workload whose selector matches p.
func resolve(ws []Workload, p *Peer) (string, error) {
	for _, w := range ws {
		if w.Match.Matches(p) {
			return w.Name, nil
		}
	}
	return "", fmt.Errorf("%w (%s)", ErrUnknownCaller, p)
}
