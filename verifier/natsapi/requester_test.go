package natsapi

import (
	"context"
	"testing"

	"github.com/nats-io/nats.go/micro"
)

// TestRequesterInfoMustBeSingle: the requester is the one Nats-Request-Info
// nats-server wrote; its client-chosen "name" is never the session's name;
// a second copy (smuggled by a client) names nobody; none is the verifier's
// own account.
func TestRequesterInfoMustBeSingle(t *testing.T) {
	info := `{"acc":"APP","name":"victim-session","name_tag":"person:dana@h/NK","tags":["role:ops","person:okta_ab"]}`
	for _, tc := range []struct {
		name    string
		headers micro.Headers
		wantN   int
		want    string // the requester's name, "" for none
	}{
		{"none", micro.Headers{}, 0, ""},
		{"one", micro.Headers{"Nats-Request-Info": {info}}, 1, "person:dana@h/NK"},
		{"two", micro.Headers{"Nats-Request-Info": {info, info}}, 2, ""},
		{"empty", micro.Headers{"Nats-Request-Info": {""}}, 1, ""},
		{"garbage", micro.Headers{"Nats-Request-Info": {"{"}}, 1, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := withRequester(context.Background(), tc.headers)
			r, n := RequesterOf(ctx)
			if n != tc.wantN {
				t.Fatalf("headers counted %d, want %d", n, tc.wantN)
			}
			switch {
			case tc.want == "" && r != nil:
				t.Fatalf("requester %+v, want none", r)
			case tc.want != "" && (r == nil || r.Name != tc.want || r.Account != "APP" || len(r.Tags) != 2):
				t.Fatalf("requester %+v, want %s", r, tc.want)
			}
			if name, _ := RequesterName(ctx); tc.want != "" && name != tc.want {
				t.Fatalf("rate-limit name %q, want the JWT's %q (not the CONNECT name)", name, tc.want)
			}
		})
	}
}
