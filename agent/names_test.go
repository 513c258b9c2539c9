package agent

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestNameCache: a name is asked for once within nameTTL and again after
// it, or as soon as the local file changes (useradd, userdel); a failed or
// empty lookup is never remembered, nor anything while the file cannot be
// stat'ed; the cache starts over past maxNames instead of growing.
func TestNameCache(t *testing.T) {
	passwd := filepath.Join(t.TempDir(), "passwd")
	if err := os.WriteFile(passwd, []byte("root:x:0:0::/root:/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	asked := map[uint32]int{}
	failing := false
	c := newNameCache(func(id uint32) (string, error) {
		asked[id]++
		switch {
		case failing:
			return "", errors.New("sssd did not answer")
		case id == 7:
			return "", nil // a bare uid
		}
		return "u" + string(rune('a'+id%26)), nil
	}, passwd)
	now := time.Unix(1_000_000, 0)
	c.now = func() time.Time { return now }

	if got := c.name(1); got != "ub" {
		t.Fatalf("name(1) = %q", got)
	}
	now = now.Add(nameTTL - time.Millisecond)
	c.name(1)
	if asked[1] != 1 {
		t.Fatalf("asked %d times within the TTL, want 1", asked[1])
	}
	now = now.Add(time.Millisecond)
	c.name(1)
	if asked[1] != 2 {
		t.Fatalf("asked %d times once the TTL passed, want 2", asked[1])
	}

	c.name(7)
	c.name(7)
	if asked[7] != 2 {
		t.Fatalf("a bare uid was remembered: asked %d times, want 2", asked[7])
	}

	failing = true
	now = now.Add(nameTTL)
	if got := c.name(1); got != "" {
		t.Fatalf("a failed lookup gave %q, want \"\"", got)
	}
	failing = false
	if got := c.name(1); got != "ub" || asked[1] != 4 {
		t.Fatalf("after a failure: %q, asked %d times; want ub, 4", got, asked[1])
	}

	// userdel rewrites the file: the next request asks again, TTL or not.
	c.name(1)
	n := asked[1]
	if err := os.WriteFile(passwd, []byte("root:x:0:0::/root:/bin/sh\neve:x:1:1::/:/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	c.name(1)
	if asked[1] != n+1 {
		t.Fatalf("the file changed and the name was not asked for again (%d → %d)", n, asked[1])
	}
	// No file to watch: nothing is remembered.
	if err := os.Remove(passwd); err != nil {
		t.Fatal(err)
	}
	c.name(1)
	c.name(1)
	if asked[1] != n+3 {
		t.Fatalf("a name was remembered with no file to watch: asked %d times, want %d", asked[1], n+3)
	}
	if err := os.WriteFile(passwd, nil, 0o644); err != nil {
		t.Fatal(err)
	}

	for id := range uint32(maxNames + 10) {
		c.name(100 + id)
	}
	if n := len(c.names); n > maxNames {
		t.Fatalf("%d names cached, bound %d", n, maxNames)
	}
}

// TestReadProcLimit: readProc returns a file whole when it fits, and never
// more than its limit when it does not.
func TestReadProcLimit(t *testing.T) {
	path := filepath.Join(t.TempDir(), "stat")
	content := make([]byte, 70_000)
	for i := range content {
		content[i] = byte('a' + i%26)
	}
	if err := os.WriteFile(path, content, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, limit := range []int{1, 1000, 1024, 4096, 65536, 100_000} {
		got, err := readProc(path, limit)
		want := content[:min(limit, len(content))]
		if err != nil || string(got) != string(want) {
			t.Fatalf("limit %d: %d bytes, %v; want %d bytes", limit, len(got), err, len(want))
		}
	}
	if _, err := readProc(filepath.Join(t.TempDir(), "gone"), 10); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a missing file: %v, want ErrNotExist", err)
	}
}
