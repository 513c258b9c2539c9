package tpm

import "github.com/google/go-tpm/tpm2"

// FlushForTest flushes a handle behind the cache's back.
func (t *TPM) FlushForTest(h tpm2.TPMHandle) error {
	if err := t.lock(); err != nil {
		return err
	}
	defer t.mu.Unlock()
	_, err := tpm2.FlushContext{FlushHandle: h}.Execute(t.tr)
	return err
}
