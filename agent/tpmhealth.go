package agent

import (
	"errors"
	"sync"
	"time"

	"github.com/tpmauthn/tpmauthn/agent/tpm"
)

// tpmHealth remembers whether the TPM answered its last command: /healthz
// says so (a swtpm service down, a device gone), and the socket's errors
// name it. The transport reconnects by itself; the first command that
// succeeds again ends the episode.
type tpmHealth struct {
	mu    sync.Mutex
	down  bool
	since time.Time
	err   string
}

// observe takes each TPM command's outcome. Only a lost connection counts:
// a command the TPM refused says nothing about whether it answers.
func (h *tpmHealth) observe(err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	switch {
	case err == nil:
		h.down = false
	case errors.Is(err, tpm.ErrUnavailable):
		if !h.down {
			h.down, h.since = true, time.Now()
		}
		h.err = err.Error()
	}
}

// state returns whether the TPM is down, since when, and the last error.
func (h *tpmHealth) state() (bool, time.Time, string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.down, h.since, h.err
}

// tpmUnavailableHint tells the caller what to do while the TPM is away.
const tpmUnavailableHint = "the TPM does not answer (the agent reconnects by itself): check the TPM device (/dev/tpmrm0) or the swtpm service"
