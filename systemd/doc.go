// Package systemd holds the systemd units of tpmauthn; its test checks them
// with systemd-analyze.
package systemd
