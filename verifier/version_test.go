package verifier

import "testing"

func TestVersionAtLeast(t *testing.T) {
	for v, want := range map[string]bool{
		"2.15.3": true, "2.15.4": true, "2.16.0": true, "3.0.0": true, "2.16.0-beta.1": true,
		"2.15.2": false, "2.14.9": false, "1.99.99": false, "": false, "2.15": false, "x.y.z": false,
	} {
		if got := versionAtLeast(v, minServer); got != want {
			t.Errorf("versionAtLeast(%q) = %v, want %v", v, got, want)
		}
	}
}
