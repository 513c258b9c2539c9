package oidclogin

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"testing"

	"github.com/tpmauthn/tpmauthn/verifier/record"
)

// testKeyBinding binds the tests' logins to a software key (api.FormGrantKey).
var testKeyBinding = strings.Repeat("ab", 32)

// TestGrantBinding: a login says where its grant will be redeemed — a
// host and a uid, or a software key — exactly one of the two, well formed,
// and a host the fleet has active; anything else is refused before any
// state is kept.
func TestGrantBinding(t *testing.T) {
	h := &Handler{cfg: Config{HostName: func(_ context.Context, id string) (string, error) {
		if id == "h-0011223344556677" {
			return "web-1", nil
		}
		return "", errors.New("no such active host")
	}}}
	for _, tc := range []struct {
		name string
		q    url.Values
		want *record.GrantBinding // nil: refused
	}{
		{"host and uid", url.Values{"host": {"h-0011223344556677"}, "uid": {"1003"}}, &record.GrantBinding{Host: "h-0011223344556677", UID: 1003}},
		{"software key", url.Values{"key": {testKeyBinding}}, &record.GrantBinding{Key: testKeyBinding}},
		{"nothing (an older tpmauthnctl)", url.Values{}, nil},
		{"host without uid", url.Values{"host": {"h-0011223344556677"}}, nil},
		{"uid without host", url.Values{"uid": {"1003"}}, nil},
		{"both kinds", url.Values{"host": {"h-0011223344556677"}, "uid": {"1003"}, "key": {testKeyBinding}}, nil},
		{"host the fleet does not have", url.Values{"host": {"h-8899aabbccddeeff"}, "uid": {"1003"}}, nil},
		{"markup in the host", url.Values{"host": {"<b>h</b>"}, "uid": {"1003"}}, nil},
		{"negative uid", url.Values{"host": {"h-0011223344556677"}, "uid": {"-1"}}, nil},
		{"uid past 32 bits", url.Values{"host": {"h-0011223344556677"}, "uid": {"4294967296"}}, nil},
		{"short key", url.Values{"key": {"abcd"}}, nil},
		{"upper-case key", url.Values{"key": {strings.ToUpper(testKeyBinding)}}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := h.grantBinding(t.Context(), tc.q.Get)
			switch {
			case tc.want == nil && (err == nil || !errors.Is(err, ErrBadRequest)):
				t.Fatalf("%v: %+v %v, want ErrBadRequest", tc.q, got, err)
			case tc.want != nil && (err != nil || *got != *tc.want):
				t.Fatalf("%v: %+v %v, want %+v", tc.q, got, err, tc.want)
			}
		})
	}
	if got := h.describe(t.Context(), &record.GrantBinding{Host: "h-0011223344556677", UID: 1003}); got != "local user 1003 on host web-1 (h-0011223344556677)" {
		t.Fatalf("describe: %q", got)
	}
	if got := h.describe(t.Context(), &record.GrantBinding{Key: testKeyBinding}); !strings.Contains(got, fmt.Sprint("software key (SHA-256 ", testKeyBinding[:16])) {
		t.Fatalf("describe: %q", got)
	}
}
