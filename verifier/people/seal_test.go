package people

import (
	"bytes"
	"errors"
	"log/slog"
	"strings"
	"testing"
)

func TestSealer(t *testing.T) {
	s, err := NewSealer(bytes.Repeat([]byte{1}, 32))
	if err != nil {
		t.Fatal(err)
	}
	other, _ := NewSealer(bytes.Repeat([]byte{2}, 32))
	sealed := s.Seal("okta_1", "REFRESH-SECRET")
	if bytes.Contains(sealed, []byte("REFRESH-SECRET")) {
		t.Fatal("sealed token holds the token")
	}
	if got, err := s.Open("okta_1", sealed); err != nil || got != "REFRESH-SECRET" {
		t.Fatalf("open: %q %v", got, err)
	}
	flipped := bytes.Clone(sealed)
	flipped[len(flipped)-1] ^= 1
	for _, tc := range []struct {
		name   string
		s      *Sealer
		person string
		sealed []byte
	}{
		{"otherPerson", s, "okta_2", sealed},
		{"otherKey", other, "okta_1", sealed},
		{"altered", s, "okta_1", flipped},
		{"short", s, "okta_1", sealed[:5]},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := tc.s.Open(tc.person, tc.sealed); !errors.Is(err, ErrSealed) {
				t.Fatalf("open: %v, want ErrSealed", err)
			}
		})
	}
	if _, err := NewSealer(make([]byte, 16)); err == nil {
		t.Fatal("a 16-byte secret accepted")
	}
	var buf strings.Builder
	slog.New(slog.NewTextHandler(&buf, nil)).Info("x", "sealer", s)
	if !strings.Contains(buf.String(), "[REDACTED]") {
		t.Fatalf("sealer logged as %s", buf.String())
	}
}
