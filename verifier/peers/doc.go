// Package peers watches the other verifier instances of a fleet for ones
// too old to share its records with.
//
// Records are JSON, and a verifier rewrites whole records: an instance
// that does not know a field drops it when it writes the record back. Some
// fields carry guarantees (a person's groups_gen and fenced_* and a
// credential's groups_gen are the regroup's fence, threat model P-16c), so
// a fleet must not run instances that drop them. Every instance names its
// NATS connection with the record fields it keeps (Name: "tpmauthn-verifier
// fields=N"); instances from before this have no such tag. Watcher asks
// every server for the connections of the callout account (CONNZ) each
// minute, and one named as a verifier with fewer fields than this one
// starts an episode: a warning in the log, an alert (older_verifier,
// audited), and a gauge, until none is left.
package peers
