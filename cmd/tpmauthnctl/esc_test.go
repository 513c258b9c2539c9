package main

import (
	"bytes"
	"strings"
	"testing"
)

// Low finding: unauthenticated names (a hostname an enrolling client
// claims, a CONNECT user quoted in an audit reason) reached `host list` and
// `audit tail` raw, terminal escapes included. Every table cell is escaped:
// no control character, newline, tab or bidirectional override passes.
func TestAttackTerminalEscapesInTables(t *testing.T) {
	for _, tc := range []struct {
		name, in, want string
	}{
		{"plain", "web-01.example.com", "web-01.example.com"},
		{"clearScreen", "\x1b[2Jowned", `\x1b[2Jowned`},
		{"fakeRow", "a\nh-0000\tactive", `a\x0ah-0000\x09active`},
		{"bidiOverride", "evil\u202ecod.exe", `evil\u202ecod.exe`},
		{"c1", "x\u009by", `x\x9by`},
		{"backslash", `a\x1b`, `a\\x1b`},
		{"unicodeName", "héte", "héte"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := esc(tc.in); got != tc.want {
				t.Fatalf("esc(%q) = %q, want %q", tc.in, got, tc.want)
			}
			var b bytes.Buffer
			row(&b, "h-1", tc.in)
			if strings.Count(b.String(), "\n") != 1 || strings.Count(b.String(), "\t") != 1 || strings.ContainsAny(b.String(), "\x1b\u202e\u009b") {
				t.Fatalf("row %q: one line of two cells, no control characters", b.String())
			}
		})
	}
}
