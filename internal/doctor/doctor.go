// Package doctor is how `tpmauthn-agent doctor` and `tpmauthnctl doctor`
// report: one line per check, ✓ or ✗ (or – when it could not be checked
// here), and for each ✗ what to do; --json for scripts; a non-zero exit
// when something is wrong.
package doctor

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"unicode"
)

// Check is one check's outcome.
type Check struct {
	Name    string `json:"name"`
	OK      bool   `json:"ok"`
	Skipped bool   `json:"skipped,omitempty"`
	Detail  string `json:"detail,omitempty"`
	Fix     string `json:"fix,omitempty"`
}

// Pass is a check that holds.
func Pass(name, format string, args ...any) Check {
	return Check{Name: name, OK: true, Detail: fmt.Sprintf(format, args...)}
}

// Fail is a check that does not hold, and what to do about it.
func Fail(name, detail, fix string) Check { return Check{Name: name, Detail: detail, Fix: fix} }

// Skip is a check that could not be made here, and why: not a failure.
func Skip(name, why string) Check { return Check{Name: name, OK: true, Skipped: true, Detail: why} }

// Failed reports whether any check failed.
func Failed(cs []Check) bool {
	for _, c := range cs {
		if !c.OK {
			return true
		}
	}
	return false
}

// Print writes the checks, as lines or (asJSON) as a JSON array.
func Print(w io.Writer, cs []Check, asJSON bool) error {
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(cs)
	}
	for _, c := range cs {
		mark := "✓"
		switch {
		case c.Skipped:
			mark = "–"
		case !c.OK:
			mark = "✗"
		}
		line := mark + " " + c.Name
		if c.Detail != "" {
			line += ": " + clean(c.Detail)
		}
		if _, err := fmt.Fprintln(w, line); err != nil {
			return err
		}
		if !c.OK && c.Fix != "" {
			if _, err := fmt.Fprintln(w, "    fix: "+clean(c.Fix)); err != nil {
				return err
			}
		}
	}
	return nil
}

// clean keeps control characters (a hostname or an error an attacker
// chose) off the terminal.
func clean(s string) string {
	return strings.Map(func(r rune) rune {
		if !unicode.IsGraphic(r) {
			return '?'
		}
		return r
	}, s)
}
