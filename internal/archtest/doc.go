// Package archtest holds no code: its test checks the import rules of
// docs/architecture.md with `go list -deps`, so that a change that breaks
// them fails `make test` rather than a review.
package archtest
