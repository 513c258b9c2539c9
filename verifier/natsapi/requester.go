package natsapi

import (
	"context"
	"encoding/json"
	"slices"
	"strings"

	"github.com/nats-io/nats.go/micro"
	"github.com/tpmauthn/tpmauthn/api"
)

// The workload account imports the verifier's service with share: true, so
// nats-server adds the requester's identity (its session's name and tags,
// which the callout set) to each request in the Nats-Request-Info header.
// The server writes it; a client cannot forge it.

type requesterKey struct{}

type requester struct {
	Account string `json:"acc"`
	// NameTag is the session's user JWT name, which the callout set ("name"
	// is the client's own CONNECT name: whatever it likes).
	NameTag string   `json:"name_tag"`
	Tags    []string `json:"tags"`
}

func withRequester(ctx context.Context, h micro.Headers) context.Context {
	// Exactly one: nats-server strips a client's copy only where the key
	// starts a CRLF line, while nats.go also splits lines at a bare LF, so a
	// client can smuggle a second Nats-Request-Info ahead of the server's.
	// With more than one, nobody is named (fail closed).
	vals := h.Values("Nats-Request-Info")
	if len(vals) != 1 || vals[0] == "" {
		return ctx
	}
	raw := vals[0]
	var r requester
	if json.Unmarshal([]byte(raw), &r) != nil {
		return ctx
	}
	return context.WithValue(ctx, requesterKey{}, &r)
}

// RequesterTag returns the value of the requester's session tag prefix:value
// (the callout's tags: host:<id>, enroll-token:<hash>, enroll-ek:<hash>),
// and false without one (or without the header: fail closed).
func RequesterTag(ctx context.Context, prefix string) (string, bool) {
	r, ok := ctx.Value(requesterKey{}).(*requester)
	if !ok {
		return "", false
	}
	for _, t := range r.Tags {
		if v, ok := strings.CutPrefix(t, prefix+":"); ok {
			return v, true
		}
	}
	return "", false
}

// RequesterIsHost reports whether the request came from host id's agent:
// its own credential's session or its host-proof session (the callout tags
// both agent:<id>; a workload's session is tagged host:<id> only, since a
// policy could let it publish to the verifier's subjects). Without the
// header (the verifier's own account, tests) it fails closed.
func RequesterIsHost(ctx context.Context, id string) bool {
	r, ok := ctx.Value(requesterKey{}).(*requester)
	return ok && slices.Contains(r.Tags, api.TagAgent+":"+id)
}
