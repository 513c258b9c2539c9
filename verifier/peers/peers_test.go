package peers

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/tpmauthn/tpmauthn/audit"
)

func TestLevel(t *testing.T) {
	for _, tc := range []struct {
		name  string
		level int
		ok    bool
	}{
		{"tpmauthn-verifier", 1, true},
		{Name(), Fields, true},
		{"tpmauthn-verifier fields=3", 3, true},
		{"tpmauthn-verifier fields=5 more=x", 5, true},
		{"tpmauthn-verifier fields=x", 1, true}, // a verifier's, unreadable: the oldest
		{"tpmauthn-verifier fields=0", 1, true},
		{"tpmauthn-verifier-sys", 0, false},
		{"tpmauthn-verifier-setup", 0, false},
		{"tpmauthnctl", 0, false},
		{"", 0, false},
	} {
		if l, ok := Level(tc.name); l != tc.level || ok != tc.ok {
			t.Errorf("Level(%q) = %d, %v; want %d, %v", tc.name, l, ok, tc.level, tc.ok)
		}
	}
}

type listerFunc func() ([]Conn, error)

func (f listerFunc) AccountConns(context.Context) ([]Conn, error) { return f() }

type alerts struct{ got []audit.Event }

func (a *alerts) Alert(kind string, e audit.Event) {
	e.Kind = kind
	a.got = append(a.got, e)
}

type fakeGauge struct{ n int }

func (g *fakeGauge) OlderVerifiers(n int) { g.n = n }

// One alert per episode; a failed lookup neither opens nor closes one;
// what the connection names is quoted in the alert.
func TestEpisode(t *testing.T) {
	var conns []Conn
	var lookupErr error
	a, g := &alerts{}, &fakeGauge{}
	w := New(Config{Conns: listerFunc(func() ([]Conn, error) { return conns, lookupErr }), Alerts: a, Metrics: g})
	self := Conn{Server: "S1", CID: 1, Name: Name(), Addr: "127.0.0.1:1"}
	old := Conn{Server: "S2", CID: 7, Name: "tpmauthn-verifier", Addr: "10.0.0.2:4222"}
	step := func(cs []Conn, err error, wantOlder, wantAlerts, wantGauge int) {
		t.Helper()
		conns, lookupErr = cs, err
		got, cerr := w.Check(t.Context())
		if !errors.Is(cerr, err) || len(got) != wantOlder || len(a.got) != wantAlerts || g.n != wantGauge {
			t.Fatalf("Check: %v (%v), %d older, %d alerts, gauge %d; want %d, %d, %d", got, cerr, len(got), len(a.got), g.n, wantOlder, wantAlerts, wantGauge)
		}
	}
	step([]Conn{self}, nil, 0, 0, 0)
	step([]Conn{self, old}, nil, 1, 1, 1)
	step([]Conn{self, old}, nil, 1, 1, 1) // the same episode
	lookup := errors.New("no server answered")
	step(nil, lookup, 0, 1, 1) // nothing learned: the episode stays open
	step([]Conn{self}, nil, 0, 1, 0)
	step([]Conn{self, old, {Name: "tpmauthn-verifier fields=1\x1b[31m"}}, nil, 2, 2, 2) // a new episode
	if r := a.got[1].Reason; !strings.Contains(r, `\x1b[31m`) || strings.Contains(r, "\x1b") {
		t.Fatalf("the alert's reason does not escape the name: %q", r)
	}
}
