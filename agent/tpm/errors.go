package tpm

import "errors"

var (
	// ErrNoEKCertificate means the TPM holds no RSA EK certificate in NV
	// (index 0x01c00002).
	ErrNoEKCertificate = errors.New("tpm: no EK certificate in NV")
	// ErrBadURI means the TPM configuration string is not understood.
	ErrBadURI = errors.New("tpm: bad TPM address")
	// ErrBadBlob means a stored key blob cannot be decoded.
	ErrBadBlob = errors.New("tpm: malformed key blob")
	// ErrClosed is returned after Close.
	ErrClosed = errors.New("tpm: closed")
)
