package tpm

import (
	"errors"
	"fmt"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
)

// keyCache keeps recently used credential keys loaded so that a signature
// needs no TPM2_Load. It is bounded by the TPM's transient object slots and
// evicts the least recently used key. Guarded by TPM.mu.
type keyCache struct {
	max   int
	order []tpm2.NamedHandle // least recently used first
}

func newKeyCache(max int) *keyCache { return &keyCache{max: max} }

func (c *keyCache) len() int { return len(c.order) }

func (c *keyCache) index(name tpm2.TPM2BName) int {
	for i, h := range c.order {
		if string(h.Name.Buffer) == string(name.Buffer) {
			return i
		}
	}
	return -1
}

func (c *keyCache) get(name tpm2.TPM2BName) (tpm2.NamedHandle, bool) {
	i := c.index(name)
	if i < 0 {
		return tpm2.NamedHandle{}, false
	}
	h := c.order[i]
	c.order = append(append(c.order[:i:i], c.order[i+1:]...), h)
	return h, true
}

func (c *keyCache) put(h tpm2.NamedHandle) { c.order = append(c.order, h) }

// forget drops an entry whose object the TPM no longer holds.
func (c *keyCache) forget(name tpm2.TPM2BName) {
	if i := c.index(name); i >= 0 {
		c.order = append(c.order[:i:i], c.order[i+1:]...)
	}
}

// forgetAll drops every entry without flushing: the TPM lost them all.
func (c *keyCache) forgetAll() { c.order = nil }

func (c *keyCache) evict(tr transport.TPM, name tpm2.TPM2BName) error {
	i := c.index(name)
	if i < 0 {
		return nil
	}
	h := c.order[i]
	c.order = append(c.order[:i:i], c.order[i+1:]...)
	if _, err := (tpm2.FlushContext{FlushHandle: h.Handle}).Execute(tr); err != nil {
		return fmt.Errorf("tpm2.FlushContext(%#x): %w", uint32(h.Handle), err)
	}
	return nil
}

// makeRoom evicts least recently used keys until one more fits.
func (c *keyCache) makeRoom(tr transport.TPM) error {
	for len(c.order) >= c.max {
		if err := c.evict(tr, c.order[0].Name); err != nil {
			return err
		}
	}
	return nil
}

// flushAll unloads every cached key, for Close and before commands that need
// every free slot.
func (c *keyCache) flushAll(tr transport.TPM) error {
	var errs []error
	for len(c.order) > 0 {
		errs = append(errs, c.evict(tr, c.order[0].Name))
	}
	return errors.Join(errs...)
}
