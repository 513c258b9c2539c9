package natsapi

import (
	"context"

	"github.com/tpmauthn/tpmauthn/api"
)

// Who calls a v1 endpoint is the scope its subject names (api.Scope): the
// callout grants each session only its own scope's subjects, and the server
// enforces the permission. No header is read (see api/scope.go for why).

// Caller is the scope the request's subject names, and false for a subject
// outside the v1 API (fail closed).
func Caller(ctx context.Context) (api.Scope, bool) {
	return api.ParseScope(RequestSubject(ctx))
}

// CallerIsHost reports whether the request came from host id's agent.
func CallerIsHost(ctx context.Context, id string) bool {
	s, ok := Caller(ctx)
	return ok && s == api.HostScope(id)
}
