package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tpmauthn/tpmauthn/api"
)

// Buckets are every bucket's name, in the order Open creates them.
var Buckets = []string{BucketHosts, BucketCredentials, BucketTokens, BucketEKs, BucketEKAllow, BucketEnroll, BucketChallenges, BucketWorkloads, BucketPeople, BucketLogins}

// Health reports each bucket's stream and the named extra streams (the
// audit stream): replicas, leader, and each peer's state as the leader
// sees it. A stream that cannot be asked is reported with its error, not
// skipped.
func (s *Store) Health(ctx context.Context, extra ...string) []api.StreamHealth {
	var out []api.StreamHealth
	names := make([]string, 0, len(Buckets)+len(extra))
	for _, b := range Buckets {
		names = append(names, "KV_"+b)
	}
	for _, name := range append(names, extra...) {
		out = append(out, s.streamHealth(ctx, name))
	}
	return out
}

func (s *Store) streamHealth(ctx context.Context, name string) api.StreamHealth {
	h := api.StreamHealth{Stream: name}
	st, err := s.JS.Stream(ctx, name)
	if err != nil {
		h.Error = err.Error()
		return h
	}
	info, err := st.Info(ctx)
	if err != nil {
		h.Error = err.Error()
		return h
	}
	h.Replicas, h.Messages, h.Bytes = info.Config.Replicas, info.State.Msgs, info.State.Bytes
	if info.Cluster == nil {
		return h
	}
	h.Leader = info.Cluster.Leader
	for _, p := range info.Cluster.Replicas {
		h.Peers = append(h.Peers, peerHealth(p))
	}
	return h
}

// lagging: a peer this many operations or this long behind the leader.
const (
	laggingOps    = 1000
	laggingActive = 10 * time.Second
)

func peerHealth(p *jetstream.PeerInfo) api.PeerHealth {
	ph := api.PeerHealth{Name: p.Name, Current: p.Current, Offline: p.Offline, Lag: p.Lag, Active: p.Active}
	switch {
	case p.Offline:
		ph.State = "offline"
	case !p.Current || p.Lag > laggingOps || p.Active > laggingActive:
		ph.State = "lagging"
	default:
		ph.State = "current"
	}
	return ph
}

// CheckReplicas says whether replicas fit a JetStream cluster of size
// servers (1: a standalone server).
func CheckReplicas(replicas, size int) error {
	switch {
	case replicas < 1 || replicas > 5:
		return fmt.Errorf("nats.replicas: %d: JetStream keeps 1 to 5 replicas", replicas)
	case replicas > size:
		return fmt.Errorf("nats.replicas: %d, but the JetStream cluster has %d server(s): add servers or lower --replicas", replicas, size)
	}
	return nil
}

// probeKey is the key Probe writes in the challenges bucket (its records
// expire with the bucket's TTL; no challenge ID has this form).
const probeKey = "probe"

// Probe writes one small record and says whether the store took it
// (api.ErrUnavailable if not): whether writes need a quorum that is there.
//
// A grant also writes the credentials bucket (the counter and session
// compare-and-set), whose stream may have lost its leader while the
// challenges bucket's has not: the probe asks that stream for its info,
// which only a leader answers, so that an episode does not end while
// every grant still fails (and start again, with a second alert, at the
// next one). Nothing is written there: a probe record would be a
// credential to every reader of the bucket.
func (s *Store) Probe(ctx context.Context) error {
	if _, err := s.Challenges.Put(ctx, probeKey, []byte(time.Now().UTC().Format(time.RFC3339Nano))); err != nil {
		return unavailable(err, "%s probe", s.Challenges.Bucket())
	}
	for _, b := range grantBuckets {
		st, err := s.JS.Stream(ctx, "KV_"+b)
		if err != nil {
			return unavailable(err, "%s probe", b)
		}
		if c := st.CachedInfo().Cluster; c != nil && c.Leader == "" {
			return unavailable(errNoLeader, "%s probe", b)
		}
	}
	return nil
}

// grantBuckets are the buckets a connect's grant writes, besides the
// challenges bucket the probe writes itself.
var grantBuckets = []string{BucketCredentials}

// errNoLeader: a clustered stream answered without a leader.
var errNoLeader = errors.New("the stream has no leader")
