package bench

import (
	"fmt"
	"os/exec"

	"golang.org/x/sys/unix"
)

// startBusy starts a busy loop pinned to CPU 0 in a child process: the
// "busy machine" a storm must stay graceful on (issue 14: a storm that took
// 12 s on a quiet machine took 51 s while other work ran). A shell loop is
// single-threaded, so pinning its one thread pins all of it.
func startBusy() (stop func(), err error) {
	cmd := exec.Command("/bin/sh", "-c", "while :; do :; done")
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("busy loop: %w", err)
	}
	stop = func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }
	var set unix.CPUSet
	set.Set(0)
	if err := unix.SchedSetaffinity(cmd.Process.Pid, &set); err != nil {
		stop()
		return nil, fmt.Errorf("pin the busy loop to CPU 0: %w", err)
	}
	return stop, nil
}

// startBusyIf is startBusy when busy, else nothing.
func startBusyIf(busy bool) (stop func(), err error) {
	if !busy {
		return func() {}, nil
	}
	return startBusy()
}
