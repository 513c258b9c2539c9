package bench

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// A storm larger than one process's descriptors allow runs its clients in a
// child process (tpmauthn-bench storm-clients), which connects them, says
// "ready", and says "back" once every client has reconnected.

type childCred struct {
	ID []byte `json:"id"`
	D  []byte `json:"d"`
}

// StormClientsArg is the subcommand that runs storm clients.
const StormClientsArg = "storm-clients"

func stormChild(ss *stormServer, res *StormResult, creds []*softCred, rpID string) (*StormResult, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	if !strings.Contains(filepath.Base(exe), "tpmauthn-bench") {
		return nil, fmt.Errorf("storm of %d clients needs them in a second process: run it from tpmauthn-bench", len(creds))
	}
	list := make([]childCred, len(creds))
	for i, c := range creds {
		list[i] = childCred{ID: c.id, D: c.key.D.Bytes()}
	}
	b, err := json.Marshal(list)
	if err != nil {
		return nil, err
	}
	file := filepath.Join(os.TempDir(), fmt.Sprintf("tpmauthn-storm-%d.json", os.Getpid()))
	if err := os.WriteFile(file, b, 0o600); err != nil {
		return nil, err
	}
	defer os.Remove(file)
	cmd := exec.Command(exe, StormClientsArg, ss.srv.ClientURL(), file, rpID)
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	cmd.Stderr = os.Stderr
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	lines := make(chan string)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	if l := <-lines; l != "ready" {
		return nil, fmt.Errorf("storm clients: %q", l)
	}
	res.ConnectS = time.Since(start).Seconds()
	ss.srv.Shutdown()
	ss.srv.WaitForShutdown()
	restarted := time.Now()
	if err := ss.start(); err != nil {
		return nil, err
	}
	select {
	case l := <-lines:
		if l != "back" {
			return nil, fmt.Errorf("storm clients: %q", l)
		}
	case <-time.After(90 * time.Second):
		res.Failures = -1 // unknown how many: the child did not report
	}
	res.ReauthS = time.Since(restarted).Seconds()
	res.CalloutsPerS = float64(res.Clients) / res.ReauthS
	return res, nil
}

// StormClientsMain runs in the child: args are URL, credential file, RP ID.
func StormClientsMain(args []string) error {
	if len(args) != 3 {
		return errors.New("usage: storm-clients URL FILE RPID")
	}
	raiseFDLimit()
	b, err := os.ReadFile(args[1])
	if err != nil {
		return err
	}
	var list []childCred
	if err := json.Unmarshal(b, &list); err != nil {
		return err
	}
	creds := make([]*softCred, len(list))
	for i, c := range list {
		k := &ecdsa.PrivateKey{D: new(big.Int).SetBytes(c.D)}
		k.Curve = elliptic.P256()
		k.X, k.Y = k.Curve.ScalarBaseMult(c.D) //nolint:staticcheck // rebuilding a key from its scalar
		creds[i] = &softCred{id: c.ID, key: k}
	}
	cl, err := connectClients(args[0], creds, args[2], "tpmauthn://"+args[2])
	if err != nil {
		return err
	}
	defer cl.close()
	fmt.Println("ready")
	last := time.Now()
	for cl.back.Load() < int64(len(creds)) {
		time.Sleep(20 * time.Millisecond)
		if time.Since(last) > 5*time.Second {
			last = time.Now()
			states := map[string]int{}
			for _, nc := range cl.conns {
				k := nc.Status().String()
				if err := nc.LastError(); err != nil {
					k += ": " + err.Error()
				}
				states[k]++
			}
			fmt.Fprintf(os.Stderr, "storm clients: %d of %d back %v\n", cl.back.Load(), len(creds), states)
		}
	}
	fmt.Println("back")
	time.Sleep(time.Hour) // the parent ends us
	return nil
}
