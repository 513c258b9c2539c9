package agent

import (
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/tpmauthn/tpmauthn/agent/tpm"
	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/attestation"
)

// credentialIDLen: 128 random bits name a credential.
const credentialIDLen = 16

const (
	akFile     = "ak.json"
	akCertFile = "ak-cert.der"
	credDir    = "credentials"
)

// Credential is one TPM-resident credential as kept on disk.
type Credential struct {
	ID         []byte    `json:"id"`
	Name       string    `json:"name"` // workload name
	RPID       string    `json:"rp_id"`
	Origin     string    `json:"origin"`
	UserHandle []byte    `json:"user_handle"`
	Created    time.Time `json:"created"`
	// CounterReserved is the highest signature counter this credential may
	// have used. Assertions take values below it without touching the disk;
	// reaching it reserves the next block first (fsync). After a crash the
	// counter resumes above it, so no value is ever used twice.
	CounterReserved uint32  `json:"counter_reserved"`
	Key             tpm.Key `json:"key"`
	// Lineage is the ID of the first credential of this workload's rotation
	// chain: the CONNECT nkey its workload keeps across rotations.
	Lineage []byte `json:"lineage,omitempty"`
	// Retires is set once a rotation replaced this credential: the verifier
	// refuses it after then, and the agent deletes it (across restarts).
	Retires time.Time `json:"retires,omitzero"`
	// Revoked is set once the agent learned that the verifier revoked this
	// credential: it never signs with it again (a revoked key presented is
	// a tamper signal at the verifier), across restarts.
	Revoked time.Time `json:"revoked,omitzero"`
	// UID is set on a person's device credential: the local user it is
	// served to (and to no one else), User that uid's account name at the
	// login (a uid whose account is another's now is not served). Person
	// is who the verifier says it acts for, Expires the end of their login.
	UID     *uint32   `json:"uid,omitempty"`
	User    string    `json:"user,omitempty"`
	Person  string    `json:"person,omitempty"`
	Expires time.Time `json:"expires,omitzero"`
}

// NKey is what a workload presents as CONNECT nkey for this credential.
func (c *Credential) NKey() string {
	if len(c.Lineage) > 0 {
		return base64.RawURLEncoding.EncodeToString(c.Lineage)
	}
	return c.IDString()
}

// counterBlock is how many counter values one fsync reserves: the disk write
// leaves the assertion path in all but 1 of counterBlock assertions, and a
// crash skips at most counterBlock-1 values of a 32-bit space.
const counterBlock = 256

// credState is a loaded credential and the last counter value it used.
type credState struct {
	mu   sync.Mutex // held across counter reservation and TPM2_Sign
	cred *Credential
	used uint32
}

// IDString is the credential ID in base64url, as WebAuthn JSON carries it.
func (c *Credential) IDString() string { return base64.RawURLEncoding.EncodeToString(c.ID) }

// Authenticator is a TPM-backed WebAuthn platform authenticator over a data
// directory. It is safe for concurrent use.
type Authenticator struct {
	tpm *tpm.TPM
	dir string

	mu     sync.Mutex
	ak     *tpm.AK
	akCert []byte
	creds  map[string]*credState // loaded on first assertion
}

// NewAuthenticator opens the data directory (created 0700 if missing) and
// loads the AK and its certificate if earlier runs made them.
func NewAuthenticator(t *tpm.TPM, dataDir string) (*Authenticator, error) {
	if err := os.MkdirAll(filepath.Join(dataDir, credDir), 0o700); err != nil {
		return nil, fmt.Errorf("data directory: %w", err)
	}
	a := &Authenticator{tpm: t, dir: dataDir, creds: map[string]*credState{}}
	blob, err := os.ReadFile(filepath.Join(dataDir, akFile))
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return nil, fmt.Errorf("read AK: %w", err)
	default:
		if a.ak, err = tpm.ParseAK(blob); err != nil {
			return nil, fmt.Errorf("%s: %w", filepath.Join(dataDir, akFile), err)
		}
	}
	cert, err := os.ReadFile(filepath.Join(dataDir, akCertFile))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("read AK certificate: %w", err)
	}
	a.akCert = cert
	return a, nil
}

// TPM returns the authenticator's TPM.
func (a *Authenticator) TPM() *tpm.TPM { return a.tpm }

// AK returns the attestation key, creating and persisting it on first use.
func (a *Authenticator) AK() (*tpm.AK, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.ak != nil {
		return a.ak, nil
	}
	ak, err := a.tpm.NewAK()
	if err != nil {
		return nil, err
	}
	if err := writeFileAtomic(filepath.Join(a.dir, akFile), ak.Blob(), 0o600); err != nil {
		return nil, err
	}
	a.ak = ak
	return ak, nil
}

// SetAKCertificate stores the AK certificate the verifier issued. It must
// certify this AK's public key.
func (a *Authenticator) SetAKCertificate(der []byte) error {
	ak, err := a.AK()
	if err != nil {
		return err
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		return fmt.Errorf("AK certificate: %w", err)
	}
	if !publicKeysEqual(c.PublicKey, ak.Public()) {
		return errors.New("AK certificate: it certifies another key than this host's AK")
	}
	if err := writeFileAtomic(filepath.Join(a.dir, akCertFile), der, 0o600); err != nil {
		return err
	}
	a.mu.Lock()
	a.akCert = der
	a.mu.Unlock()
	return nil
}

// AKCertificate returns the stored AK certificate (DER), or nil.
func (a *Authenticator) AKCertificate() []byte {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.akCert
}

func publicKeysEqual(x, y any) bool {
	k, ok := x.(interface{ Equal(crypto.PublicKey) bool })
	return ok && k.Equal(y)
}

// RegisterOptions describes a credential to create (WebAuthn §5.1.3 inputs).
type RegisterOptions struct {
	Name       string // workload name
	RPID       string
	Origin     string
	Challenge  []byte // verifier-issued, at least 16 bytes
	UserHandle []byte // 1..64 bytes; random when empty
	Lineage    []byte // for a rotation: the lineage of the replaced credential
	// ID is the credential ID to use; random (16 bytes) when empty, as it
	// should be. A chosen one is for tests and tools that must reproduce a
	// registration (an authenticator picks its IDs: the verifier cannot
	// trust them to be fresh).
	ID []byte
}

// Register creates a TPM credential key, has the AK certify it and returns a
// standard registration response (attestation format "tpm").
func (a *Authenticator) Register(o RegisterOptions) (*api.RegistrationResponse, *Credential, error) {
	if len(o.Challenge) < 16 {
		return nil, nil, fmt.Errorf("register: challenge is %d bytes, WebAuthn requires at least 16", len(o.Challenge))
	}
	ak, err := a.AK()
	if err != nil {
		return nil, nil, err
	}
	akCert := a.AKCertificate()
	if akCert == nil {
		return nil, nil, ErrNotEnrolled
	}
	cred := &Credential{Name: o.Name, RPID: o.RPID, Origin: o.Origin, UserHandle: o.UserHandle, Created: time.Now().UTC(), Lineage: o.Lineage}
	if cred.ID = o.ID; len(cred.ID) == 0 {
		if cred.ID, err = randomBytes(credentialIDLen); err != nil {
			return nil, nil, err
		}
	}
	if len(cred.UserHandle) == 0 {
		if cred.UserHandle, err = randomBytes(32); err != nil {
			return nil, nil, err
		}
	}
	key, err := a.tpm.CreateKey()
	if err != nil {
		return nil, nil, fmt.Errorf("register: %w", err)
	}
	cred.Key = *key
	authData, err := registrationAuthData(cred)
	if err != nil {
		return nil, nil, err
	}
	cdj, err := attestation.NewClientDataJSON(attestation.TypeCreate, o.Challenge, o.Origin)
	if err != nil {
		return nil, nil, err
	}
	extra := sha256.Sum256(attestation.SignedData(authData, cdj))
	certInfo, sig, err := a.tpm.Certify(key, ak, extra[:])
	if err != nil {
		return nil, nil, fmt.Errorf("register: %w", err)
	}
	attObj, err := attestation.NewTPMAttestationObject(authData, key.Public, certInfo, sig, akCert)
	if err != nil {
		return nil, nil, err
	}
	if err := writeJSON(a.credPath(cred.ID), cred); err != nil {
		return nil, nil, err
	}
	return attestation.NewRegistrationResponse(cred.ID, cdj, attObj), cred, nil
}

func registrationAuthData(c *Credential) ([]byte, error) {
	pub, err := c.Key.PublicKey()
	if err != nil {
		return nil, err
	}
	pt, err := pub.Bytes() // 0x04 ‖ X ‖ Y, fixed width
	if err != nil {
		return nil, err
	}
	cose, err := attestation.EncodeCOSEKey(pt[1:33], pt[33:65])
	if err != nil {
		return nil, err
	}
	ad := attestation.NewAuthenticatorData(c.RPID, 0)
	ad.Flags |= attestation.FlagAttested
	ad.AAGUID = attestation.AAGUID
	ad.CredentialID = c.ID
	ad.PublicKey = cose
	return ad.Marshal(), nil
}

// Assert signs an assertion for challenge with the credential, for any
// relying party: clientDataJSON names the credential's origin. The counter
// value is covered by a persisted reservation before the TPM signs.
func (a *Authenticator) Assert(credID, challenge []byte) (*attestation.Assertion, error) {
	return a.assert(credID, challenge, false)
}

// AssertForVerifier signs an assertion the tpmauthn verifier will consume (a
// NATS connect, a rotation proof): clientDataJSON names
// attestation.VerifierOrigin, which Assert never does.
func (a *Authenticator) AssertForVerifier(credID, challenge []byte) (*attestation.Assertion, error) {
	return a.assert(credID, challenge, true)
}

func (a *Authenticator) assert(credID, challenge []byte, forVerifier bool) (*attestation.Assertion, error) {
	st, err := a.state(credID)
	if err != nil {
		return nil, err
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	if !st.cred.Revoked.IsZero() {
		return nil, fmt.Errorf("assert: credential %s: %w", st.cred.IDString(), ErrCredentialRevoked)
	}
	counter, err := a.nextCounter(st)
	if err != nil {
		return nil, err
	}
	cred := st.cred
	origin := cred.Origin
	if forVerifier {
		origin = attestation.VerifierOrigin(cred.RPID)
	} else if origin == attestation.VerifierOrigin(cred.RPID) {
		return nil, fmt.Errorf("assert: credential %s names the verifier's own origin %s as its origin: refused", cred.IDString(), origin)
	}
	authData := attestation.NewAuthenticatorData(cred.RPID, counter).Marshal()
	cdj, err := attestation.NewClientDataJSON(attestation.TypeGet, challenge, origin)
	if err != nil {
		return nil, err
	}
	digest := sha256.Sum256(attestation.SignedData(authData, cdj))
	sig, err := a.tpm.Sign(&cred.Key, digest[:])
	if err != nil {
		return nil, fmt.Errorf("assert: %w", err)
	}
	return &attestation.Assertion{CredentialID: cred.ID, AuthData: authData, ClientDataJSON: cdj, Signature: sig, UserHandle: cred.UserHandle}, nil
}

// nextCounter returns the next counter value, first persisting a new
// reservation when the current one is used up. Called with st.mu held.
func (a *Authenticator) nextCounter(st *credState) (uint32, error) {
	if st.used == math.MaxUint32 {
		return 0, ErrCounterExhausted
	}
	next := st.used + 1
	if next > st.cred.CounterReserved {
		c := *st.cred
		c.CounterReserved = uint32(min(uint64(next)+counterBlock-1, math.MaxUint32))
		if err := writeJSON(a.credPath(c.ID), &c); err != nil {
			return 0, fmt.Errorf("assert: reserve counter values: %w", err)
		}
		st.cred = &c
	}
	st.used = next
	return next, nil
}

// MarkRetiring records when a replaced credential retires, so that a later
// process still deletes it.
func (a *Authenticator) MarkRetiring(id []byte, at time.Time) error {
	st, err := a.state(id)
	if err != nil {
		return err
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	c := *st.cred
	c.Retires = at.UTC()
	if err := writeJSON(a.credPath(c.ID), &c); err != nil {
		return fmt.Errorf("record the retirement of %s: %w", c.IDString(), err)
	}
	st.cred = &c
	return nil
}

// MarkRevoked records that the verifier revoked a credential: from its
// return on, the credential signs nothing (the mark is on disk before the
// signing lock is released, so a restart keeps it).
func (a *Authenticator) MarkRevoked(id []byte, at time.Time) error {
	st, err := a.state(id)
	if err != nil {
		return err
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	if !st.cred.Revoked.IsZero() {
		return nil
	}
	c := *st.cred
	c.Revoked = at.UTC()
	if err := writeJSON(a.credPath(c.ID), &c); err != nil {
		return fmt.Errorf("record the revocation of %s: %w", c.IDString(), err)
	}
	st.cred = &c
	return nil
}

// state returns the loaded credential, reading it from disk the first time.
// Values up to the stored reservation count as used: an earlier process may
// have spent them.
func (a *Authenticator) state(id []byte) (*credState, error) {
	a.mu.Lock()
	st, ok := a.creds[string(id)]
	a.mu.Unlock()
	if ok {
		return st, nil
	}
	cred, err := a.Credential(id)
	if err != nil {
		return nil, err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if st, ok := a.creds[string(id)]; ok {
		return st, nil
	}
	st = &credState{cred: cred, used: cred.CounterReserved}
	a.creds[string(id)] = st
	return st, nil
}

func (a *Authenticator) credPath(id []byte) string {
	return filepath.Join(a.dir, credDir, base64.RawURLEncoding.EncodeToString(id)+".json")
}

// Credential reads one credential.
func (a *Authenticator) Credential(id []byte) (*Credential, error) {
	if len(id) == 0 || len(id) > attestation.MaxCredentialIDLen {
		return nil, ErrUnknownCredential
	}
	var c Credential
	if err := readJSON(a.credPath(id), &c); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, ErrUnknownCredential
		}
		return nil, err
	}
	return &c, nil
}

// Credentials lists the stored credentials, oldest first.
func (a *Authenticator) Credentials() ([]*Credential, error) {
	paths, err := filepath.Glob(filepath.Join(a.dir, credDir, "*.json"))
	if err != nil {
		return nil, err
	}
	var out []*Credential
	for _, p := range paths {
		var c Credential
		if err := readJSON(p, &c); err != nil {
			return nil, err
		}
		out = append(out, &c)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Created.Before(out[j].Created) })
	return out, nil
}

func randomBytes(n int) ([]byte, error) {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		return nil, err
	}
	return b, nil
}

// DeleteCredential removes a credential's key blob and record (for example
// one the verifier refused, or one rotated out).
func (a *Authenticator) DeleteCredential(id []byte) error {
	st, err := a.state(id)
	if err != nil {
		return err
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	if err := a.tpm.Unload(&st.cred.Key); err != nil {
		return err
	}
	a.mu.Lock()
	delete(a.creds, string(id))
	a.mu.Unlock()
	if err := os.Remove(a.credPath(id)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}
