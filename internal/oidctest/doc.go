// Package oidctest runs a real OpenID provider in-process for tests:
// zitadel/oidc's certified pkg/op behind its example login form and
// in-memory storage, with users that have groups (and any extra claims, such
// as Entra's oid) in their ID tokens. It also drives a login the way a
// browser would, with a plain net/http client and a cookie jar.
//
// The example server is not a stable API of zitadel/oidc (people.md §3), so
// everything the tests rely on is wrapped here; go.mod pins its version.
package oidctest
