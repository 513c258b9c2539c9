package agent

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package's tests (agent and agent_test alike: one test
// binary) if any goroutine is still running once they are done. The agent
// owns every goroutine it starts and Close waits for them, so nothing is
// ignored here: an ignore would have to name a goroutine that is genuinely
// someone else's and outlives its owner's Close.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
