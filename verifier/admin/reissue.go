package admin

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/audit"
	"github.com/tpmauthn/tpmauthn/verifier/natsapi"
	"github.com/tpmauthn/tpmauthn/verifier/record"
	"github.com/tpmauthn/tpmauthn/verifier/store"
)

// credentialReissue lets a host register a new credential for a workload
// whose credential is revoked. The revoked credential stays revoked (its
// state machine has no way out of revoked); the workload index is marked so
// that register.begin, which only the host's own sessions may call, accepts
// one registration without a rotation proof, whose credential is a new
// lineage. The agent learns of it from credentials.status. The request
// names the revoked credential, or "<host ID>/<workload>".
func (s *Service) credentialReissue(ctx context.Context, body []byte) (_ any, err error) {
	var req api.IDRequest
	if err := natsapi.Decode(body, &req); err != nil {
		return nil, err
	}
	ev := by(ctx, audit.Event{Kind: "reissue", Result: "error", Reason: req.Reason})
	defer func() {
		if err != nil {
			ev.Reason = strings.TrimPrefix(req.Reason+": "+err.Error(), ": ")
		}
		s.cfg.Trail.RecordNow(ctx, ev)
	}()
	c, err := s.reissueTarget(ctx, req.ID)
	if err != nil {
		return nil, err
	}
	ev.Host, ev.Workload, ev.Credential = c.Host, c.Workload, c.ID
	if c.Status != api.CredentialRevoked {
		return nil, fmt.Errorf("%w: credential %s is %s: revoke it first ('tpmauthnctl credential revoke %s'); a reissue replaces a revoked credential only",
			api.ErrBadRequest, c.ID, c.Status, c.ID)
	}
	if _, err := s.cfg.Fleet.ActiveHost(ctx, c.Host); err != nil {
		return nil, err
	}
	now := s.cfg.Now().UTC()
	idx, _, err := store.Mutate(ctx, s.st.Workloads, c.Host+"."+c.Workload, func(w *record.WorkloadIndex) error {
		if w.Credential != c.ID {
			return fmt.Errorf("%w: credential %s is no longer workload %s's (its current one is %s)", api.ErrBadRequest, c.ID, c.Workload, w.Credential)
		}
		w.Reissued, w.ReissueReason = now, req.Reason
		return nil
	})
	if err != nil {
		return nil, err
	}
	ev.Result = "ok"
	s.nudge(c.Host)
	s.log.Info("credential reissued", "host", c.Host, "workload", c.Workload, "revoked", idx.Credential, "reason", req.Reason)
	return &api.ReissueResponse{Host: c.Host, Workload: c.Workload, Revoked: c.ID, Reissued: now}, nil
}

// reissueTarget reads the credential an ID names: a credential ID, or
// "<host ID>/<workload>" for the workload's current credential.
func (s *Service) reissueTarget(ctx context.Context, id string) (*record.Credential, error) {
	if host, workload, ok := strings.Cut(id, "/"); ok {
		if host == "" || workload == "" || strings.ContainsAny(id, ".*> ") {
			return nil, fmt.Errorf("%w: %q: name a credential ID or <host ID>/<workload>", api.ErrBadRequest, id)
		}
		idx, _, err := store.Get[record.WorkloadIndex](ctx, s.st.Workloads, host+"."+workload)
		if errors.Is(err, api.ErrNotFound) {
			return nil, fmt.Errorf("%w: host %s has no credential for workload %s", api.ErrNotFound, host, workload)
		}
		if err != nil {
			return nil, err
		}
		id = idx.Credential
	}
	c, _, err := store.Get[record.Credential](ctx, s.st.Credentials, id)
	return c, err
}
