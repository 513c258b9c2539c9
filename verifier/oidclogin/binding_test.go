package oidclogin

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/verifier/record"
)

// testKeyBinding binds the tests' logins to a software key (api.FormGrantKey).
var testKeyBinding = strings.Repeat("ab", 32)

// TestGrantBinding: a login says where its grant will be redeemed — a
// host and a uid, or a software key — exactly one of the two, well formed,
// and a host the fleet has active; anything else is refused before any
// state is kept.
func TestGrantBinding(t *testing.T) {
	h := &Handler{cfg: Config{Logger: slog.New(slog.DiscardHandler), HostName: testHostName}}
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
		{"revoked host", url.Values{"host": {"h-revoked"}, "uid": {"1003"}}, nil},
		{"markup in the host", url.Values{"host": {"<b>h</b>"}, "uid": {"1003"}}, nil},
		{"negative uid", url.Values{"host": {"h-0011223344556677"}, "uid": {"-1"}}, nil},
		{"uid past 32 bits", url.Values{"host": {"h-0011223344556677"}, "uid": {"4294967296"}}, nil},
		{"short key", url.Values{"key": {"abcd"}}, nil},
		{"upper-case key", url.Values{"key": {strings.ToUpper(testKeyBinding)}}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, _, err := h.grantBinding(t.Context(), tc.q.Get)
			switch {
			case tc.want == nil && (err == nil || !errors.Is(err, ErrBadRequest)):
				t.Fatalf("%v: %+v %v, want ErrBadRequest", tc.q, got, err)
			case tc.want != nil && (err != nil || *got != *tc.want):
				t.Fatalf("%v: %+v %v, want %+v", tc.q, got, err, tc.want)
			}
		})
	}
	b, where, err := h.grantBinding(t.Context(), url.Values{"host": {"h-0011223344556677"}, "uid": {"1003"}}.Get)
	if err != nil || where != "local user 1003 on host h-0011223344556677 (hostname web-1)" {
		t.Fatalf("where: %q %v", where, err)
	}
	if got := h.describeNow(t.Context(), b); got != where {
		t.Fatalf("describeNow: %q, want %q", got, where)
	}
	if got := h.describeNow(t.Context(), &record.GrantBinding{Host: "h-revoked", UID: 7}); got != "local user 7 on host h-revoked" {
		t.Fatalf("describeNow of a revoked host: %q", got)
	}
	if _, where, _ := h.grantBinding(t.Context(), url.Values{"key": {testKeyBinding}}.Get); !strings.Contains(where, fmt.Sprint("software key (SHA-256 ", testKeyBinding[:16])) {
		t.Fatalf("where: %q", where)
	}
}

// testHostName is a fleet of one active host (web-1), one revoked, and a
// store that is down for h-outage.
func testHostName(_ context.Context, id string) (string, error) {
	switch id {
	case "h-0011223344556677":
		return "web-1", nil
	case "h-revoked":
		return "", fmt.Errorf("%w: host %s is revoked", api.ErrHostNotActive, id)
	case "h-outage":
		return "", fmt.Errorf("%w: kv get", api.ErrUnavailable)
	}
	return "", fmt.Errorf("%w: host %q", api.ErrNotFound, id)
}

// TestGrantBindingRefusals: whoever asks learns that a host is not an
// active one — the same words for no such host and a revoked one — and
// an older tpmauthnctl is told to upgrade, on the page and at the device
// endpoint alike; a store that cannot answer is not the client's fault.
func TestGrantBindingRefusals(t *testing.T) {
	h := &Handler{cfg: Config{Logger: slog.New(slog.DiscardHandler), HostName: testHostName}}
	refuse := func(q url.Values) error {
		t.Helper()
		_, _, err := h.grantBinding(t.Context(), q.Get)
		if err == nil {
			t.Fatalf("%v: accepted", q)
		}
		return err
	}
	unknown := refuse(url.Values{"host": {"h-8899aabbccddeeff"}, "uid": {"1003"}})
	revoked := refuse(url.Values{"host": {"h-revoked"}, "uid": {"1003"}})
	if !errors.Is(unknown, ErrNotInFleet) || unknown.Error() != revoked.Error() {
		t.Fatalf("unknown host %q, revoked host %q: want the same ErrNotInFleet", unknown, revoked)
	}
	if strings.Contains(revoked.Error(), "revoked") {
		t.Fatalf("%q says the host's status", revoked)
	}
	outage := refuse(url.Values{"host": {"h-outage"}, "uid": {"1003"}})
	if errors.Is(outage, ErrBadRequest) || !errors.Is(outage, api.ErrUnavailable) {
		t.Fatalf("store outage: %v, want api.ErrUnavailable and not ErrBadRequest", outage)
	}
	if code, _ := status(outage); code != http.StatusServiceUnavailable {
		t.Fatalf("store outage: page status %d", code)
	}
	unbound := refuse(url.Values{})
	code, msg := status(unbound)
	if code != http.StatusBadRequest || !strings.Contains(msg, "upgrade tpmauthnctl") {
		t.Fatalf("an older tpmauthnctl's login: page %d %q, want 400 telling it to upgrade", code, msg)
	}
	rec := httptest.NewRecorder()
	h.tokenFailed(rec, httptest.NewRequest(http.MethodPost, api.PathDeviceCode, nil), unbound)
	if rec.Code != http.StatusBadRequest || !strings.Contains(rec.Body.String(), "upgrade tpmauthnctl") {
		t.Fatalf("an older tpmauthnctl's device login: %d %s", rec.Code, rec.Body)
	}
	rec = httptest.NewRecorder()
	h.tokenFailed(rec, httptest.NewRequest(http.MethodPost, api.PathDeviceCode, nil), revoked)
	if rec.Code != http.StatusBadRequest || strings.Contains(rec.Body.String(), "revoked") || !strings.Contains(rec.Body.String(), "not an active host") {
		t.Fatalf("a revoked host's device login: %d %s", rec.Code, rec.Body)
	}
}
