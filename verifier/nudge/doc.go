// Package nudge tells a host's agent, over a request it holds open, that an
// operator changed one of the host's credentials (asked for a rotation,
// revoked, reissued), so that "now" in `tpmauthnctl credential rotate` is
// true instead of the agent's next poll (a minute).
//
// The agent calls credentials.watch on its host's scope
// (tpmauthn.v1.h.HOST.credentials.watch); one verifier instance holds it,
// up to api.MaxCredentialsWatch. An operator's change, served by any
// instance, is broadcast on a subject of the verifier's own account
// (tpmauthn.nudge.HOST), which every instance hears, and whichever holds the
// host's watch answers it. A nudge is a hint: it carries nothing but the
// host, the agent then asks credentials.status as at any poll, and a lost
// one leaves the agent's periodic check to find the change.
package nudge
