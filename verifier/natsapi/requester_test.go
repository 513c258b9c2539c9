package natsapi

import (
	"context"
	"testing"

	"github.com/nats-io/nats.go/micro"
)

// TestRequesterInfoMustBeSingle: the requester is the one Nats-Request-Info
// a request carries; its client-chosen "name" is never the session's name
// (the rate limiter's key is the user JWT's name_tag); a second copy names
// nobody. (nats.go's header parsing can still be made to drop or replace
// the server's copy: nothing that decides who may do what reads it — the
// operator API goes by subject, see verifier/operators.)
func TestRequesterInfoMustBeSingle(t *testing.T) {
	info := `{"acc":"APP","name":"victim-session","name_tag":"person:dana@h/NK","tags":["role:ops","person:okta_ab"]}`
	for _, tc := range []struct {
		name    string
		headers micro.Headers
		want    string // the requester's name, "" for none
	}{
		{"none", micro.Headers{}, ""},
		{"one", micro.Headers{"Nats-Request-Info": {info}}, "person:dana@h/NK"},
		{"two", micro.Headers{"Nats-Request-Info": {info, info}}, ""},
		{"empty", micro.Headers{"Nats-Request-Info": {""}}, ""},
		{"garbage", micro.Headers{"Nats-Request-Info": {"{"}}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			name, ok := RequesterName(withRequester(context.Background(), tc.headers))
			if name != tc.want || ok != (tc.want != "") {
				t.Fatalf("RequesterName = %q %v, want %q", name, ok, tc.want)
			}
		})
	}
}
