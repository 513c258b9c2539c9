package natsapi

import (
	"errors"
	"testing"

	"github.com/tpmauthn/tpmauthn/api"
)

// FuzzDecodeRequests feeds every request type of the v1 and operator APIs
// what a session may send: Decode must never panic, and whatever it refuses
// is a bad request (never an internal error the client cannot act on).
func FuzzDecodeRequests(f *testing.F) {
	for _, seed := range []string{
		`{"token":"tpmauthn-join-x","hostname":"h","ek_public":"AAAA","ak":{"public":"AA=="},"tpm":{"manufacturer":1}}`,
		`{"session":"s","secret":"AAAA"}`,
		`{"host_id":"h-1","workload":"billing","rotate_from":"abc"}`,
		`{"host_id":"h-1","workload":"w","challenge":"AAAA","response":{"id":"x","rawId":"x","type":"public-key","response":{"clientDataJSON":"","attestationObject":""}}}`,
		`{"roles":["a"],"ttl":3600000000000}`, `{"id":"x","reason":"y"}`, `{"ek_hash":"ab"}`, `{"from":1,"max":2}`,
		`{"unknown":1}`, `[`, `null`, `{"host_id":1}`, "\xff\xfe",
	} {
		f.Add([]byte(seed))
	}
	targets := []func() any{
		func() any { return &api.EnrollBeginRequest{} }, func() any { return &api.EnrollFinishRequest{} },
		func() any { return &api.EnrollStatusRequest{} }, func() any { return &api.RegisterBeginRequest{} },
		func() any { return &api.RegisterFinishRequest{} }, func() any { return &api.CredentialStatusRequest{} },
		func() any { return &api.TokenCreateRequest{} }, func() any { return &api.IDRequest{} },
		func() any { return &api.EKAllowRequest{} }, func() any { return &api.CredentialListRequest{} },
		func() any { return &api.AuditReadRequest{} },
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		for _, mk := range targets {
			if err := Decode(body, mk()); err != nil && !errors.Is(err, api.ErrBadRequest) {
				t.Fatalf("Decode(%q) = %v: not a bad request", body, err)
			}
			if err := Decode(body, mk()); err != nil {
				if code, _ := Code(err); code != api.CodeBadRequest {
					t.Fatalf("Decode(%q): code %s, want bad_request", body, code)
				}
			}
		}
	})
}
