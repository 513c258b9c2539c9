package api

import (
	"log/slog"
	"time"
)

// SubjectAdminPrefix prefixes the operator API's subjects. The v1
// endpoints (scope.go) are exported from the verifier's account to the
// workload account; the operator API is reachable only by people's
// sessions that their roles let in, and the operator key.
const SubjectAdminPrefix = "tpmauthn.admin."

// EKUserPrefix marks a CONNECT user that asks for an enrollment session by EK
// allow-list rather than join token: the user name is EKUserPrefix followed by
// EKHash of the EK public key.
const EKUserPrefix = "ek:"

// Tags of the session JWTs the verifier grants ("prefix:value"), for
// whoever reads sessions (the server's connz, audit). No endpoint trusts
// them: a request's tags reach it in a header a client can forge
// (scope.go).
const (
	TagHost        = "host"         // every session of a host: its workloads' and its agent's
	TagAgent       = "agent"        // a host's agent: its credential's session, or its host proof's
	TagEnrollToken = "enroll-token" // a join token's enrollment session: the token's hash
	TagEnrollEK    = "enroll-ek"    // an allow-listed EK's enrollment session: the EK's hash
)

// AgentWorkload is the reserved workload name of each agent's own host
// credential: its sessions may only register credentials with the verifier.
const AgentWorkload = "tpmauthn-agent"

// HostUserPrefix marks a CONNECT user that asks for an enrollment session as
// an enrolled host: the user name is HostUserPrefix followed by the host ID,
// the password the base64url activation secret of its enrollment. It lets a
// host wait for approval and register its own credential.
const HostUserPrefix = "host:"

// AKParams are go-attestation's attest.AttestationParameters on the wire.
type AKParams struct {
	Public            []byte `json:"public"`
	CreateData        []byte `json:"create_data"`
	CreateAttestation []byte `json:"create_attestation"`
	CreateSignature   []byte `json:"create_signature"`
}

// TPMInfo is what the agent read from the TPM's fixed properties.
type TPMInfo struct {
	Manufacturer     uint32 `json:"manufacturer"`
	VendorString     string `json:"vendor_string"`
	FirmwareVersion1 uint32 `json:"firmware_version_1"`
}

// EnrollBeginRequest opens an enrollment (DESIGN.md flow 1).
type EnrollBeginRequest struct {
	Token    string   `json:"token,omitempty"`   // join token, or empty for the EK allow-list
	Hostname string   `json:"hostname"`          // a label; identity is the EK
	EKCert   []byte   `json:"ek_cert,omitempty"` // DER, when the TPM holds one
	EKPublic []byte   `json:"ek_public"`         // PKIX DER
	AK       AKParams `json:"ak"`
	TPM      TPMInfo  `json:"tpm"`
	// EKPublicArea is the EK's TPMT_PUBLIC, when the agent read it: the
	// credential is then made for the EK's own name algorithm and
	// symmetric scheme (those of an ECC P-384 EK, say).
	EKPublicArea []byte `json:"ek_public_area,omitempty"`
	// MoreEKs are the TPM's other certified EKs. The verifier challenges
	// each (credential activation with the same AK) and claims them all for
	// the host: a revoked TPM cannot come back with another of its EKs.
	MoreEKs []EKKey `json:"more_eks,omitempty"`
}

// MaxMoreEKs bounds EnrollBeginRequest.MoreEKs: a TPM has at most nine
// certified EKs (the low range and H-1 to H-7).
const MaxMoreEKs = 9

// EKKey is one more EK of the enrolling TPM.
type EKKey struct {
	PublicArea []byte `json:"public_area"`    // TPMT_PUBLIC
	Cert       []byte `json:"cert,omitempty"` // DER
}

// EKChallenge is a credential-activation challenge for one of MoreEKs: the
// bare TPM2B_ID_OBJECT and TPM2B_ENCRYPTED_SECRET contents.
type EKChallenge struct {
	Credential []byte `json:"credential"`
	Secret     []byte `json:"secret"`
}

// EnrollBeginResponse carries the credential-activation challenge.
type EnrollBeginResponse struct {
	Session    string `json:"session"`
	Credential []byte `json:"credential"` // attest.EncryptedCredential.Credential
	Secret     []byte `json:"secret"`     // attest.EncryptedCredential.Secret
	// MoreChallenges answer the request's MoreEKs, in order.
	MoreChallenges []EKChallenge `json:"more_challenges,omitempty"`
}

// EnrollFinishRequest returns the activated secret.
type EnrollFinishRequest struct {
	Session string `json:"session"`
	Secret  []byte `json:"secret"`
	// MoreSecrets are the secrets of MoreChallenges, in order.
	MoreSecrets [][]byte `json:"more_secrets,omitempty"`
}

// EnrollResult is the answer to enroll.finish and enroll.status.
type EnrollResult struct {
	HostID string     `json:"host_id"`
	Status HostStatus `json:"status"`            // HostActive or HostPending
	AKCert []byte     `json:"ak_cert,omitempty"` // DER, once active
	RPID   string     `json:"rp_id"`
	Origin string     `json:"origin"`
}

// EnrollStatusRequest asks whether a pending host was approved. The session
// secret proves the asker is the host that enrolled.
type EnrollStatusRequest struct {
	HostID string `json:"host_id"`
	Proof  []byte `json:"proof"` // the activated secret of the enrollment
}

// HostStatus is where a host is in its life (see verifier/record for the
// transitions the verifier allows).
type HostStatus string

// Host statuses.
const (
	HostPending    HostStatus = "pending"    // enrolled, waiting for an operator
	HostActive     HostStatus = "active"     // may register credentials and connect
	HostRevoked    HostStatus = "revoked"    // refused; its credentials are revoked
	HostOffboarded HostStatus = "offboarded" // removed; its EK may enroll again as a new host
)

// CredentialStatus is where a credential is in its life.
type CredentialStatus string

// Credential statuses.
const (
	CredentialActive      CredentialStatus = "active"
	CredentialQuarantined CredentialStatus = "quarantined" // a tamper signal: refused until an operator releases it
	CredentialRevoked     CredentialStatus = "revoked"     // refused for good
)

// RegisterBeginRequest asks for a registration challenge.
type RegisterBeginRequest struct {
	HostID   string `json:"host_id"`
	Workload string `json:"workload"`
	// RotateFrom names the credential this one replaces; the finish request
	// must then carry a rotation proof signed by it.
	RotateFrom string `json:"rotate_from,omitempty"`
	// Person, instead of a workload: a person's device credential on this
	// host, for the local user who redeemed a login grant at the agent.
	// Workload is then PersonWorkload.
	Person *PersonRegistration `json:"person,omitempty"`
}

// PersonWorkload is the Workload of a person's device credential
// registration: the verifier names the credential after the person.
const PersonWorkload = "person"

// PersonRegistration is a login grant redeemed through a host's agent: the
// person's credential is bound, on that host, to the local user the agent
// named by peer credentials (UID, User), who presented the grant.
type PersonRegistration struct {
	Grant string `json:"grant"`
	UID   uint32 `json:"uid"`
	User  string `json:"user,omitempty"`
}

// LogValue keeps the grant out of logs (slog.LogValuer).
func (p PersonRegistration) LogValue() slog.Value {
	return slog.GroupValue(slog.Uint64("uid", uint64(p.UID)), slog.String("user", p.User), slog.String("grant", "[REDACTED]"))
}

// RegisterBeginResponse is the challenge and the WebAuthn parameters.
type RegisterBeginResponse struct {
	Challenge  []byte    `json:"challenge"`
	UserHandle []byte    `json:"user_handle"`
	RPID       string    `json:"rp_id"`
	Origin     string    `json:"origin"`
	Expires    time.Time `json:"expires"`
	// AKCert is the host's current AK certificate (DER): the verifier
	// renews it when a third of its validity is left, and the agent
	// attests with this one.
	AKCert []byte `json:"ak_cert,omitempty"`
}

// RegisterFinishRequest carries the registration response.
type RegisterFinishRequest struct {
	HostID    string                `json:"host_id"`
	Workload  string                `json:"workload"`
	Challenge []byte                `json:"challenge"`
	Response  *RegistrationResponse `json:"response"`
	// RotationProof is an assertion by the replaced credential over
	// RotationChallenge(challenge, new credential ID).
	RotationProof *AssertionResponse `json:"rotation_proof,omitempty"`
}

// CredentialStatusRequest names the asking host.
type CredentialStatusRequest struct {
	HostID string `json:"host_id"`
}

// PersonLogoutRequest: a person logged out on the host: the verifier
// revokes their credential there (its sessions are kicked).
type PersonLogoutRequest struct {
	HostID       string `json:"host_id"`
	CredentialID string `json:"credential_id"`
}

// CredentialsWatchRequest waits until an operator changes one of the host's
// credentials (rotation requested, revoked, reissued), or Wait has passed:
// the agent checks its credentials at once, instead of at its next poll.
type CredentialsWatchRequest struct {
	HostID string `json:"host_id"`
	// Wait is how long the verifier may hold the request (capped at
	// MaxCredentialsWatch; 0: that).
	Wait time.Duration `json:"wait,omitempty"`
}

// MaxCredentialsWatch bounds how long a credentials.watch is held.
const MaxCredentialsWatch = 45 * time.Second

// CredentialsWatchResponse: Changed is true when an operator changed one of
// the host's credentials; false when Wait passed without.
type CredentialsWatchResponse struct {
	Changed bool `json:"changed"`
}

// CredentialState is what the verifier says of one credential.
type CredentialState struct {
	ID       string           `json:"id"`
	Workload string           `json:"workload"`
	Status   CredentialStatus `json:"status"`
	Created  time.Time        `json:"created"`
	RotateBy time.Time        `json:"rotate_by,omitzero"` // rotate before this (max age, or now if requested)
	Retires  time.Time        `json:"retires,omitzero"`   // replaced: refused after this
	// Reissue: the credential is revoked and an operator allowed the host
	// to register a new one for the workload (tpmauthnctl credential
	// reissue): its agent registers one, a new lineage.
	Reissue bool `json:"reissue,omitempty"`
}

// RegisterFinishResponse names the stored credential.
type RegisterFinishResponse struct {
	CredentialID string `json:"credential_id"`
	// Retires is when a replaced credential stops being accepted.
	Retires time.Time `json:"retires,omitzero"`
	// Person is set for a person's device credential: who it acts for,
	// its name in NATS (PersonWorkload's credential is named after the
	// person) and when it expires (the login's end).
	Person   *Person   `json:"person,omitempty"`
	Workload string    `json:"workload,omitempty"`
	Expires  time.Time `json:"expires,omitzero"`
}
