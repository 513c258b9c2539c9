package tpm

import (
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/google/go-attestation/attest"
	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
)

// TPM is an open TPM. It is safe for concurrent use; commands are serialized.
type TPM struct {
	mu     sync.Mutex
	tr     *countingTransport
	at     *attest.TPM
	info   Info
	srk    *tpm2.NamedHandle // cached once known to exist
	keys   *keyCache
	closed bool
	stale  int    // transient objects found (and flushed) at Open
	gen    uint64 // transport generation the key cache belongs to
	// names caches each key's TPM name by its public area: computing it
	// through go-tpm's reflective (un)marshalling took ~240 µs, on every
	// signature.
	names map[string]tpm2.TPM2BName
}

// Info identifies the TPM, as read from its fixed properties
// (TPM 2.0 Part 2 §6.13, TPM_PT).
type Info struct {
	Manufacturer     uint32 // TPM_PT_MANUFACTURER, e.g. 0x49424D00 ("IBM")
	VendorString     string // TPM_PT_VENDOR_STRING_1..4, trimmed
	FirmwareVersion1 uint32 // TPM_PT_FIRMWARE_VERSION_1
	FirmwareVersion2 uint32 // TPM_PT_FIRMWARE_VERSION_2
	TransientSlots   uint32 // TPM_PT_HR_TRANSIENT_MIN
}

// Open opens the TPM at addr ("" or a device path such as /dev/tpmrm0, or
// swtpm://host:port), reads its identity and flushes transient objects left by
// an earlier process that died before flushing them.
func Open(addr string) (*TPM, error) {
	raw, err := openTransport(addr)
	if err != nil {
		return nil, err
	}
	t, err := newTPM(raw)
	if err != nil {
		_ = raw.Close()
		return nil, fmt.Errorf("open TPM %s: %w", addr, err)
	}
	return t, nil
}

func newTPM(raw transport.TPMCloser) (*TPM, error) {
	ct := &countingTransport{next: raw}
	t := &TPM{tr: ct}
	info, err := readInfo(ct)
	if err != nil {
		return nil, err
	}
	t.info = info
	stale, err := flushTransient(ct)
	if err != nil {
		return nil, err
	}
	t.stale = stale
	at, err := attest.OpenTPM(&attest.OpenConfig{
		CommandChannel: &attestChannel{t: ct},
	})
	if err != nil {
		return nil, fmt.Errorf("go-attestation open: %w", err)
	}
	t.at = at
	t.keys = newKeyCache(cacheSize(info.TransientSlots))
	return t, nil
}

// cacheSize leaves two slots free: one for a persistent parent or EK while a
// command runs, one for the AK during TPM2_Certify.
func cacheSize(slots uint32) int {
	if slots < 3 {
		return 1
	}
	return int(slots) - 2
}

// Info returns the TPM's identity, read at Open.
func (t *TPM) Info() Info { return t.info }

// StaleTransientAtOpen returns how many transient objects an earlier user left
// loaded; Open flushed them.
func (t *TPM) StaleTransientAtOpen() int { return t.stale }

// SetObserver reports every later TPM command to o (nil stops).
func (t *TPM) SetObserver(o Observer) {
	if o == nil {
		t.tr.observer.Store(nil)
		return
	}
	t.tr.observer.Store(&o)
}

// Commands returns the number of TPM commands sent so far.
func (t *TPM) Commands() uint64 { return t.tr.total.Load() }

// Close flushes every cached key and closes the connection.
func (t *TPM) Close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil
	}
	t.closed = true
	ferr := t.keys.flushAll(t.tr)
	return errors.Join(ferr, t.tr.Close())
}

// lock takes the TPM. If the connection was remade since the last command
// (swtpm restarted), the key cache names objects that no longer exist, and
// their handle numbers may be reused by other objects: forget them.
func (t *TPM) lock() error {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return ErrClosed
	}
	if g := t.tr.generation(); g != t.gen {
		t.gen = g
		t.keys.forgetAll()
		t.srk = nil
	}
	return nil
}

// EK is the TPM's RSA endorsement key and, where the manufacturer provisioned
// one, its certificate.
type EK struct {
	Public      crypto.PublicKey
	Certificate *x509.Certificate // nil when the TPM holds none
}

// EK reads the endorsement key. A TPM without an EK certificate returns the
// public key with a nil Certificate (the allow-list enrollment path).
func (t *TPM) EK() (*EK, error) {
	if err := t.lock(); err != nil {
		return nil, err
	}
	defer t.mu.Unlock()
	eks, err := t.at.EKs()
	if err != nil {
		return nil, fmt.Errorf("read EK: %w", err)
	}
	for _, ek := range eks {
		if ek.Public != nil {
			return &EK{Public: ek.Public, Certificate: ek.Certificate}, nil
		}
	}
	return nil, errors.New("read EK: the TPM reports no endorsement key")
}

// TransientHandles lists the transient objects currently loaded. After Close
// of every user of a TPM it must be empty; tests assert that.
func (t *TPM) TransientHandles() ([]tpm2.TPMHandle, error) {
	if err := t.lock(); err != nil {
		return nil, err
	}
	defer t.mu.Unlock()
	return transientHandles(t.tr)
}

// LoadedKeys returns how many credential keys the cache holds loaded.
func (t *TPM) LoadedKeys() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.keys.len()
}

func transientHandles(tr transport.TPM) ([]tpm2.TPMHandle, error) {
	rsp, err := tpm2.GetCapability{
		Capability:    tpm2.TPMCapHandles,
		Property:      uint32(tpm2.TPMHTTransient) << 24,
		PropertyCount: 64,
	}.Execute(tr)
	if err != nil {
		return nil, fmt.Errorf("tpm2.GetCapability(handles): %w", err)
	}
	hs, err := rsp.CapabilityData.Data.Handles()
	if err != nil {
		return nil, fmt.Errorf("tpm2.GetCapability(handles): %w", err)
	}
	return hs.Handle, nil
}

// flushTransient flushes every transient object and returns how many there
// were. Under /dev/tpmrm0 the kernel shows each connection only its own
// objects, so this never touches another process's work; on swtpm, which has
// no resource manager, it frees the slots of a process that died.
func flushTransient(tr transport.TPM) (int, error) {
	hs, err := transientHandles(tr)
	if err != nil {
		return 0, err
	}
	for _, h := range hs {
		if _, err := (tpm2.FlushContext{FlushHandle: h}).Execute(tr); err != nil {
			return 0, fmt.Errorf("flush stale transient handle %#x: %w", uint32(h), err)
		}
	}
	return len(hs), nil
}

func readInfo(tr transport.TPM) (Info, error) {
	props, err := fixedProperties(tr, tpm2.TPMPTManufacturer, tpm2.TPMPTHRTransientMin)
	if err != nil {
		return Info{}, err
	}
	info := Info{
		Manufacturer:     props[tpm2.TPMPTManufacturer],
		FirmwareVersion1: props[tpm2.TPMPTFirmwareVersion1],
		FirmwareVersion2: props[tpm2.TPMPTFirmwareVersion1+1],
		TransientSlots:   props[tpm2.TPMPTHRTransientMin],
	}
	var vendor []byte
	for p := tpm2.TPMPTVendorString1; p < tpm2.TPMPTVendorString1+4; p++ {
		v := props[p]
		vendor = append(vendor, byte(v>>24), byte(v>>16), byte(v>>8), byte(v))
	}
	info.VendorString = strings.Join(strings.Fields(strings.Trim(string(vendor), "\x00")), " ")
	return info, nil
}

// fixedProperties reads the TPM_PT range [first, last].
func fixedProperties(tr transport.TPM, first, last tpm2.TPMPT) (map[tpm2.TPMPT]uint32, error) {
	out := make(map[tpm2.TPMPT]uint32)
	next := first
	for next <= last {
		rsp, err := tpm2.GetCapability{
			Capability:    tpm2.TPMCapTPMProperties,
			Property:      uint32(next),
			PropertyCount: uint32(last-next) + 1,
		}.Execute(tr)
		if err != nil {
			return nil, fmt.Errorf("tpm2.GetCapability(properties): %w", err)
		}
		ps, err := rsp.CapabilityData.Data.TPMProperties()
		if err != nil {
			return nil, fmt.Errorf("tpm2.GetCapability(properties): %w", err)
		}
		if len(ps.TPMProperty) == 0 {
			break
		}
		for _, p := range ps.TPMProperty {
			out[p.Property] = p.Value
			next = p.Property + 1
		}
		if !rsp.MoreData {
			break
		}
	}
	return out, nil
}
