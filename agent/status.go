package agent

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/tpmauthn/tpmauthn/agent/tpm"
	"github.com/tpmauthn/tpmauthn/api"
)

// checkRecord is the verifier's last answer to the credential check.
type checkRecord struct {
	at  time.Time
	err error
}

// hostID is the enrolled host's ID.
func (a *Agent) hostID() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.enroll == nil {
		return ""
	}
	return a.enroll.HostID
}

// noteCheck records a credential check's outcome for status.
func (a *Agent) noteCheck(err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if err == nil {
		a.lastCheck.at, a.lastCheck.err = time.Now().UTC(), nil
		return
	}
	a.lastCheck.err = err
}

// status answers api.AgentPathStatus: to root and the agent's own user
// only (other local users learn nothing of the host's workloads here).
func (a *Agent) status(w http.ResponseWriter, _ *http.Request, p *Peer) {
	if p.UID != 0 && p.UID != uint32(os.Geteuid()) {
		writeErr(w, http.StatusForbidden, "the agent's status is for root and the agent's user", "run tpmauthn-agent doctor as root")
		return
	}
	var st api.AgentStatus
	a.mu.Lock()
	if a.enroll != nil {
		st.Host, st.HostStatus = a.enroll.HostID, string(a.enroll.Status)
	}
	st.LastCheck = a.lastCheck.at
	if a.lastCheck.err != nil {
		st.CheckError = a.lastCheck.err.Error()
		if errors.Is(a.lastCheck.err, ErrHostRefused) {
			st.HostStatus = HostRefused
		}
	}
	for _, wl := range a.cfg.Workloads {
		ws := api.AgentWorkloadStatus{Name: wl.Name}
		if c := a.creds[wl.Name]; c != nil {
			ws.Credential = c.IDString()
		}
		if d := a.down[wl.Name]; d != nil {
			ws.Problem, ws.Hint = d.msg, d.hint
		}
		st.Workloads = append(st.Workloads, ws)
	}
	a.mu.Unlock()
	if a.tp != nil {
		in := a.tp.Info()
		st.TPM.Manufacturer, st.TPM.Vendor = manufacturer(in.Manufacturer), in.VendorString
		st.TPM.Firmware = firmware(in)
		st.TPM.Slots = in.TransientSlots
	}
	if down, _, err := a.tpmHealth.state(); down {
		st.TPM.Error = fmt.Sprint(err)
	}
	respondJSON(w, http.StatusOK, st)
}

// manufacturer is a TPM_PT_MANUFACTURER as its four ASCII letters.
func manufacturer(v uint32) string {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], v)
	return strings.TrimRight(string(b[:]), "\x00 ")
}

// firmware is TPM_PT_FIRMWARE_VERSION_1 and _2 as the vendors print them.
func firmware(in tpm.Info) string {
	return fmt.Sprintf("%08x.%08x", in.FirmwareVersion1, in.FirmwareVersion2)
}
