// Package personkey is a person's software key, for a machine without a TPM
// (or without the agent): a P-256 key in a file only its user can read,
// registered with the verifier by `tpmauthnctl login` and signing NATS
// nonces in the same bundle a TPM credential does. Its assurance is
// "software": roles whose binding requires hardware refuse it.
//
// The key file holds the private key, the credential ID and the RP ID; the
// signature counter is kept beside it (KEY.counter), bumped under an
// exclusive lock before each signature, so that two programs of the person
// never sign the same counter value. Package personkey/natskey connects
// nats.go with it (it links the WebAuthn wire format; this package, which
// tpmauthnctl login uses, does not).
package personkey

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/internal/atomicfile"
)

// Key is a person's registered software key.
type Key struct {
	path   string
	priv   *ecdsa.PrivateKey
	stored stored
}

// stored is the key file.
type stored struct {
	CredentialID string    `json:"credential_id"` // base64url
	RPID         string    `json:"rp_id"`
	Person       string    `json:"person"`
	NATSURL      string    `json:"nats_url,omitempty"`
	Expires      time.Time `json:"expires"`
	PrivateKey   string    `json:"private_key"` // PKCS#8 PEM
}

// Generate makes a new private key (not yet registered).
func Generate() (*ecdsa.PrivateKey, error) {
	return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
}

// Thumbprint names a public key (PKIX DER) in a login's binding
// (api.FormGrantKey): the hex SHA-256 of its DER. A login made for a
// software key is redeemed only with that key.
func Thumbprint(pkixDER []byte) string {
	h := sha256.Sum256(pkixDER)
	return hex.EncodeToString(h[:])
}

// ProofDigest is what a registration's proof of possession signs: the
// grant it redeems, so the proof cannot be reused for another.
func ProofDigest(grant string) []byte {
	h := sha256.Sum256([]byte("tpmauthn/person-key/v1\x00" + grant))
	return h[:]
}

// Save writes a registered key to path, 0600, whole.
func Save(path string, priv *ecdsa.PrivateKey, reg *api.PersonKeyResponse) (*Key, error) {
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return nil, err
	}
	st := stored{CredentialID: reg.CredentialID, RPID: reg.RPID, Person: reg.Person.ID, NATSURL: reg.NATSURL, Expires: reg.Expires,
		PrivateKey: string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))}
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, err
	}
	if err := atomicfile.Write(path, append(b, '\n'), 0o600); err != nil {
		return nil, err
	}
	return &Key{path: path, priv: priv, stored: st}, nil
}

// Load reads a key file, refusing one other users could read.
func Load(path string) (*Key, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("%s is readable by others (%v): chmod 600 it, or log in again", path, fi.Mode().Perm())
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var st stored
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	blk, _ := pem.Decode([]byte(st.PrivateKey))
	if blk == nil {
		return nil, fmt.Errorf("%s: no private key", path)
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	priv, ok := k.(*ecdsa.PrivateKey)
	if !ok || priv.Curve != elliptic.P256() {
		return nil, fmt.Errorf("%s: not a P-256 key", path)
	}
	return &Key{path: path, priv: priv, stored: st}, nil
}

// NKey is the CONNECT nkey: the credential ID.
func (k *Key) NKey() string { return k.stored.CredentialID }

// Person is who the key acts for, NATSURL the fleet's NATS as the login
// saw it ("" if unknown), Expires the end of the login.
func (k *Key) Person() string     { return k.stored.Person }
func (k *Key) NATSURL() string    { return k.stored.NATSURL }
func (k *Key) Expires() time.Time { return k.stored.Expires }

// ErrExpired: the login the key came with has ended.
var ErrExpired = errors.New("the login of this key has ended: log in again (tpmauthnctl login)")

// RPID is the verifier's RP ID the key signs for.
func (k *Key) RPID() string { return k.stored.RPID }

// Sign signs a digest with the key (ECDSA, ASN.1 DER), if the login has not
// ended.
func (k *Key) Sign(digest []byte) ([]byte, error) {
	if !time.Now().Before(k.stored.Expires) {
		return nil, ErrExpired
	}
	return ecdsa.SignASN1(rand.Reader, k.priv, digest)
}

// NextCounter is the next signature counter value, persisted before it is
// used (see the package doc).
func (k *Key) NextCounter() (uint32, error) { return k.nextCounter() }

// nextCounter bumps the counter file under an exclusive lock.
func (k *Key) nextCounter() (uint32, error) {
	f, err := os.OpenFile(k.path+".counter", os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		return 0, err
	}
	b := make([]byte, 32)
	n, _ := f.ReadAt(b, 0)
	cur := uint64(0)
	if s := strings.TrimSpace(string(b[:n])); s != "" {
		if cur, err = strconv.ParseUint(s, 10, 32); err != nil {
			return 0, fmt.Errorf("%s: %w", f.Name(), err)
		}
	}
	if cur >= math.MaxUint32 {
		return 0, errors.New("signature counter exhausted: log in again for a new key")
	}
	next := cur + 1
	if err := f.Truncate(0); err != nil {
		return 0, err
	}
	if _, err := f.WriteAt([]byte(strconv.FormatUint(next, 10)+"\n"), 0); err != nil {
		return 0, err
	}
	if err := f.Sync(); err != nil {
		return 0, err
	}
	return uint32(next), nil
}

// DefaultPath is where tpmauthnctl login keeps the key: the user config
// directory's tpmauthn/person-key.json.
func DefaultPath() (string, error) {
	dir, err := os.UserConfigDir()
	if err != nil {
		return "", err
	}
	return filepath.Join(dir, "tpmauthn", "person-key.json"), nil
}
