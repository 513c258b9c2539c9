package auditlog

import (
	"errors"
	"fmt"
	"log/slog"
	"time"
)

// Defaults of Config.
const (
	// DefaultMaxBytes bounds the stream: about 1.5 million events of
	// ~700 bytes. JetStream reserves it on disk when the stream is created
	// (and refuses a bound larger than 75% of the free space), so it is
	// modest; an operator who keeps more raises it (audit.max_bytes).
	DefaultMaxBytes = 1 << 30
	// DefaultMaxAge is how long events are kept: 90 days, a common
	// retention for security logs; archive older events with
	// `tpmauthnctl audit export`.
	DefaultMaxAge = 90 * 24 * time.Hour
	// DefaultNearLimit is the share of MaxBytes at which an alert is
	// raised: time to export and raise the limit before the stream is full.
	DefaultNearLimit = 0.8
	// DefaultWatchEvery is how often the stream's usage and head are looked
	// at and the checkpoint is written.
	DefaultWatchEvery = 15 * time.Second
)

// Config configures the stream and the writer.
//
// Discard policy: the stream discards new events when full (DiscardNew),
// never old ones. With DiscardOld, anyone who can make the verifier write
// events (an unauthenticated client's refused CONNECT is one) could push the
// oldest evidence out of the trail by flooding it; with DiscardNew the flood
// fills the stream instead, the writer's appends fail, and the verifier
// fails closed: it grants no connection it cannot record (Unavailable), and
// says so in the refusal's audit reason, in an alert and in metrics. That
// trades an attacker's erasure of evidence for a denial of service that is
// loud and that an operator ends by exporting and raising the limit. Max
// age is not the attacker's to speed up: events older than it expire even
// with DiscardNew, and the chain is then verified from the oldest event
// kept (audit.VerifyKept).
//
// The limits apply when the stream is created. The product's credentials
// may not update the stream (keys.AuditStreamDenied: a lower limit would
// drop events at once), so changing them on an existing stream takes an
// administrator's credential, e.g. `nats stream edit TPMAUTHN_AUDIT
// --max-bytes ...`; Open logs when the configuration and the stream differ.
type Config struct {
	Replicas int // default 1
	// AllowDelete lets the stream's messages be deleted through the API
	// (tests of tamper detection); by default deletion and purge are refused.
	AllowDelete bool
	// MaxBytes bounds the stream's size (DefaultMaxBytes; negative: no
	// bound, the disk is the limit).
	MaxBytes int64
	// MaxAge is how long events are kept (DefaultMaxAge; negative: for
	// ever).
	MaxAge time.Duration
	// NearLimit is the share of MaxBytes at which an alert is raised
	// (DefaultNearLimit).
	NearLimit float64
	// CheckpointFile is where the writer keeps its signed checkpoint of the
	// chain's head (outside the stream: see checkpoint.go); empty keeps
	// none.
	CheckpointFile string
	// WatchEvery is how often Watch looks at the stream and writes the
	// checkpoint (DefaultWatchEvery).
	WatchEvery time.Duration
	// FailClosedAfter is how long appends may fail (JetStream away, a
	// leader election) before Unavailable refuses grants; a full stream
	// refuses them at once (5s).
	FailClosedAfter time.Duration
	// OnAppend, if set, is told how long each successful append took.
	OnAppend func(time.Duration)
	Logger   *slog.Logger // nil: discard
}

func (c *Config) setDefaults() {
	if c.MaxBytes == 0 {
		c.MaxBytes = DefaultMaxBytes
	}
	if c.MaxAge == 0 {
		c.MaxAge = DefaultMaxAge
	}
	if c.NearLimit == 0 {
		c.NearLimit = DefaultNearLimit
	}
	if c.WatchEvery == 0 {
		c.WatchEvery = DefaultWatchEvery
	}
	if c.FailClosedAfter == 0 {
		c.FailClosedAfter = 5 * time.Second
	}
}

// Validate reports every problem at once, naming the config keys.
func (c *Config) Validate() error {
	var errs []error
	if c.NearLimit < 0 || c.NearLimit >= 1 {
		errs = append(errs, fmt.Errorf("audit.near_limit: %v, want a share of max_bytes between 0 and 1", c.NearLimit))
	}
	if c.MaxBytes > 0 && c.MaxBytes < 1<<20 {
		errs = append(errs, fmt.Errorf("audit.max_bytes: %d, want at least 1 MiB (or negative for no bound)", c.MaxBytes))
	}
	if c.MaxAge > 0 && c.MaxAge < time.Hour {
		errs = append(errs, fmt.Errorf("audit.max_age: %v, want at least 1h (or negative to keep events for ever)", c.MaxAge))
	}
	if c.WatchEvery < 0 {
		errs = append(errs, fmt.Errorf("audit.watch_every: %v, want a positive duration", c.WatchEvery))
	}
	return errors.Join(errs...)
}

// streamLimits are the JetStream values of the configured limits (-1 and
// 0: none).
func (c *Config) streamLimits() (maxBytes int64, maxAge time.Duration) {
	maxBytes, maxAge = c.MaxBytes, c.MaxAge
	if maxBytes < 0 {
		maxBytes = -1
	}
	if maxAge < 0 {
		maxAge = 0
	}
	return maxBytes, maxAge
}
