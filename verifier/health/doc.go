// Package health watches whether the fleet state can take writes and says
// so: when the store fails (no quorum, disk full, JetStream away) new
// connects are already denied by the decision (api.ErrUnavailable, fail
// closed); this package makes it visible. It raises the alert
// store_unavailable once per episode, keeps a gauge, answers /healthz, and
// probes the store with a write until it takes writes again, so the episode
// ends by itself, without traffic. Live sessions are not touched: they run
// on to their expiry.
package health
