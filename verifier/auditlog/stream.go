package auditlog

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/nats-io/nats.go/jetstream"
)

// openStream returns the audit stream, creating it when it does not exist.
// It never updates an existing one: the verifier's credential is denied
// stream updates on it (keys.AuditStreamDenied), because an update that
// lowers max bytes or max age drops events at once. A stream whose limits
// differ from cfg is used as it is, and the difference logged with what to
// run.
func openStream(ctx context.Context, js jetstream.JetStream, cfg Config) (jetstream.Stream, error) {
	want := streamConfig(cfg)
	for attempt := 0; ; attempt++ {
		s, err := js.Stream(ctx, Stream)
		if err == nil {
			warnIfDiffers(cfg.Logger, s.CachedInfo().Config, want)
			return s, nil
		}
		if !errors.Is(err, jetstream.ErrStreamNotFound) {
			return nil, fmt.Errorf("audit stream: %w", err)
		}
		s, err = js.CreateStream(ctx, want)
		if err == nil {
			return s, nil
		}
		// Another verifier created it first (with other limits: "already in
		// use"): use theirs.
		if !errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) || attempt > 0 {
			return nil, fmt.Errorf("audit stream: create: %w", err)
		}
	}
}

// streamConfig is the stream as the verifier creates it.
func streamConfig(cfg Config) jetstream.StreamConfig {
	maxBytes, maxAge := cfg.streamLimits()
	return jetstream.StreamConfig{
		Name: Stream, Subjects: []string{Subject}, Storage: jetstream.FileStorage,
		Replicas: max(cfg.Replicas, 1), DenyDelete: !cfg.AllowDelete, DenyPurge: !cfg.AllowDelete,
		Retention: jetstream.LimitsPolicy, Discard: jetstream.DiscardNew,
		MaxBytes: maxBytes, MaxAge: maxAge,
	}
}

// warnIfDiffers logs the limits in which the existing stream differs from
// the configuration, with the command that changes them.
func warnIfDiffers(log *slog.Logger, have, want jetstream.StreamConfig) {
	if log == nil {
		return
	}
	if have.MaxBytes != want.MaxBytes || have.MaxAge != want.MaxAge || have.Discard != want.Discard {
		log.Warn("the audit stream's limits differ from the configuration; the verifier may not change them "+
			"(its credential is denied stream updates): apply them with an administrator's credential, "+
			"e.g. nats stream edit "+Stream+" --max-bytes=N --max-age=D",
			"stream_max_bytes", have.MaxBytes, "config_max_bytes", want.MaxBytes,
			"stream_max_age", have.MaxAge, "config_max_age", want.MaxAge, "stream_discard", have.Discard.String())
	}
	if !have.DenyDelete || !have.DenyPurge {
		log.Warn("the audit stream allows deleting or purging messages (deny_delete, deny_purge unset)",
			"deny_delete", have.DenyDelete, "deny_purge", have.DenyPurge)
	}
}
