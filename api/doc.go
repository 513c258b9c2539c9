// Package api holds tpmauthn's wire types: what crosses a process boundary as
// JSON. The verifier's NATS endpoints (tpmauthn.v1.*, the enrollment and
// registration protocol of DESIGN.md flows 1 and 2), its operator API
// (tpmauthn.admin.*), the error replies with their stable codes, and the
// WebAuthn Level 3 JSON forms of registrations and assertions.
//
// It imports only the standard library, so that every client (the agent,
// agent/client, tpmauthnctl, a program of the user's) can use it without
// linking the verifier, nats-server or a WebAuthn library. A field added here
// is a protocol change: old peers ignore it, none is ever repurposed.
package api
