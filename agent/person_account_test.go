package agent

import "testing"

// TestCheckAccount: a person credential is served only to the account name
// it was made for; a caller without a name (the name service did not
// answer) is refused without losing it; another name drops it.
func TestCheckAccount(t *testing.T) {
	for _, tc := range []struct {
		name      string
		made, now string
		want      accountVerdict
	}{
		{"same", "dana", "dana", accountSame},
		{"renamedOrReused", "dana", "eve", accountOther},
		{"lookupFailed", "dana", "", accountUnnamed},
		{"madeBeforeNamesWereKept", "", "dana", accountOther},
		{"bareUIDBoth", "", "", accountSame},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := checkAccount(&Credential{User: tc.made}, tc.now); got != tc.want {
				t.Fatalf("checkAccount(made for %q, now %q) = %d, want %d", tc.made, tc.now, got, tc.want)
			}
		})
	}
}
