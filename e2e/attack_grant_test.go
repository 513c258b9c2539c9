package e2e

import (
	"bufio"
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/audit"
	"github.com/tpmauthn/tpmauthn/internal/fleettest"
	"github.com/tpmauthn/tpmauthn/internal/oidctest"
	"github.com/tpmauthn/tpmauthn/internal/swtpmtest"
	"github.com/tpmauthn/tpmauthn/personkey"
)

// TestAttackLeakedGrantElsewhere (P-15 residual): a login grant that
// leaked (a terminal's scrollback, a log) is presented by someone else — at
// another enrolled host's agent, by another local user of the same host,
// or as a software key. Each is refused, the grant is spent by the first
// try, and the trail says so. A grant asked for without an agent (a
// software key's) is refused by every agent.
func TestAttackLeakedGrantElsewhere(t *testing.T) {
	requireRoot(t)
	op := oidctest.Start(t, oidctest.User{ID: "u-dana", Username: "dana", Password: "pw", Name: "Dana", Email: "dana@example.com", Groups: []string{"developers"}})
	sw2 := swtpmtest.New(t) // another machine's TPM, of another maker
	f := peopleFleetWith(t, op, personPolicy, func(f *fleettest.Fleet) {
		for name, c := range map[string]*x509.Certificate{"root2.pem": sw2.RootCert(t), "intermediate2.pem": sw2.IntermediateCert(t)} {
			if err := os.WriteFile(filepath.Join(f.EKCADir, name), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw}), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	})
	h1 := f.NewHost(t)
	h2 := fleettest.NewHost(t, sw2, f.URL(), f.Token(t, time.Hour, "demo"))

	refused := func(what string, st int, body map[string]any) {
		t.Helper()
		if st != http.StatusForbidden || !strings.Contains(strings.ToLower(bodyText(body)), "log in again") {
			t.Fatalf("%s: %d %v, want 403 and \"log in again\"", what, st, body)
		}
	}
	// At another host's agent, by the same uid: refused, and spent.
	g := loginGrantAt(t, f, op, "dana", "pw", h1, personUID).AccessToken
	st, body := personLoginAs(t, h2, personUID, g)
	refused("a grant for host 1 at host 2", st, body)
	st, body = personLoginAs(t, h1, personUID, g)
	refused("the same grant, back at host 1 after it was tried at host 2", st, body)

	// At the right host by another local user.
	g = loginGrantAt(t, f, op, "dana", "pw", h1, personUID).AccessToken
	st, body = personLoginAs(t, h1, otherUID, g)
	refused("dana's grant by another user of her host", st, body)

	// As a software key.
	g = loginGrantAt(t, f, op, "dana", "pw", h1, personUID).AccessToken
	if code := softwareKeyLogin(t, f, g); code != http.StatusForbidden && code != http.StatusUnauthorized {
		t.Fatalf("a host's grant registered as a software key: %d, want a refusal", code)
	}

	// A software key's grant (bound to a key) at an agent.
	g = loginGrant(t, f, op, "dana", "pw").AccessToken
	st, body = personLoginAs(t, h1, personUID, g)
	refused("a software key's grant at an agent", st, body)

	// Where it was asked for, it works.
	g = loginGrantAt(t, f, op, "dana", "pw", h1, personUID).AccessToken
	if st, body := personLoginAs(t, h1, personUID, g); st != http.StatusOK {
		t.Fatalf("a grant at its own host and user: %d %v", st, body)
	}

	n := 0
	for _, e := range f.AuditEvents(t) {
		if e.Kind == "person.grant.redeem" && e.Result != audit.OK && strings.Contains(e.Reason, "leaked") {
			n++
		}
	}
	if n != 4 {
		t.Fatalf("%d audited refusals of a misplaced grant, want 4", n)
	}
}

func bodyText(m map[string]any) string {
	b, _ := json.Marshal(m)
	return string(b)
}

// softwareKeyLogin registers a new P-256 key with grant at the verifier's
// PathPersonKey, as tpmauthnctl login --no-agent does, and returns the
// HTTP status.
func softwareKeyLogin(t *testing.T, f *fleettest.Fleet, grant string) int {
	t.Helper()
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := x509.MarshalPKIXPublicKey(&priv.PublicKey)
	proof, err := ecdsa.SignASN1(rand.Reader, priv, personkey.ProofDigest(grant))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := json.Marshal(api.PersonKeyRequest{PublicKey: pub, Proof: proof})
	req, _ := http.NewRequest(http.MethodPost, f.Verifier.HTTPURL()+api.PathPersonKey, bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+grant)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

var (
	ctlDeviceURL  = regexp.MustCompile(`^  (https?://\S+)$`)
	ctlDeviceCode = regexp.MustCompile(`^and enter the code (\S+)$`)
)

// TestCLILoginBindsItsGrant: tpmauthnctl login, run as a local user on a
// host with an agent, asks the agent where it is and binds its grant there
// (the device page shows it), and the agent then registers the user's TPM
// credential with it.
func TestCLILoginBindsItsGrant(t *testing.T) {
	requireRoot(t)
	op := oidctest.Start(t, oidctest.User{ID: "u-dana", Username: "dana", Password: "pw", Name: "Dana", Email: "dana@example.com", Groups: []string{"developers"}})
	f := peopleFleet(t, op)
	h := f.NewHost(t)
	home := fleettest.PublicDir(t)
	if err := os.Chown(home, personUID, personUID); err != nil {
		t.Fatal(err)
	}
	// Where the person's uid may run it (a test's temp dir is root's only).
	ctl := filepath.Join(home, "tpmauthnctl")
	if b, err := os.ReadFile(buildCtl(t)); err != nil || os.WriteFile(ctl, b, 0o755) != nil {
		t.Fatalf("copy tpmauthnctl: %v", err)
	}
	out := filepath.Join(home, "login.json")
	cmd := exec.Command(ctl, "login", "--device", "--url", f.Verifier.HTTPURL(), "--agent-socket", h.Socket, "--out", out, "--wait", "60s")
	cmd.Env = []string{"HOME=" + home, "XDG_CONFIG_HOME=" + home, "PATH=" + os.Getenv("PATH")}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: personUID, Gid: personUID}}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stdout bytes.Buffer
	cmd.Stdout = &stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	var told strings.Builder
	var verify, userCode string
	sc := bufio.NewScanner(stderr)
	for userCode == "" && sc.Scan() {
		told.WriteString(sc.Text() + "\n")
		if m := ctlDeviceURL.FindStringSubmatch(sc.Text()); m != nil {
			verify = m[1]
		}
		if m := ctlDeviceCode.FindStringSubmatch(sc.Text()); m != nil {
			userCode = m[1]
		}
	}
	go func() { _, _ = io.Copy(io.Discard, stderr); done <- cmd.Wait() }()
	if userCode == "" {
		t.Fatalf("tpmauthnctl login printed no device code: %v\n%s", <-done, told.String())
	}
	b := oidctest.Browser(t)
	resp, err := b.Get(verify)
	if err != nil {
		t.Fatal(err)
	}
	resp = oidctest.Submit(t, b, resp, url.Values{"user_code": {userCode}})
	page, _ := io.ReadAll(resp.Body)
	if want := "for <b>local user " + strconv.Itoa(personUID) + " on host " + h.HostID(t) + " (hostname host-under-test)</b>"; !strings.Contains(string(page), want) {
		t.Fatalf("the device page does not say where the login is for (want %q):\n%s", want, page)
	}
	// The person compares the page with what their terminal said.
	if want := "This login is for local user " + strconv.Itoa(personUID) + " on host " + h.HostID(t) + ":"; !strings.Contains(told.String(), want) {
		t.Fatalf("tpmauthnctl login did not say where the login is for (want %q):\n%s", want, told.String())
	}
	resp.Body = io.NopCloser(bytes.NewReader(page))
	resp = oidctest.Submit(t, b, resp, url.Values{"idp": {"okta"}})
	cb := op.LogIn(t, b, resp, "dana", "pw")
	if resp, err = b.Get(cb.String()); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("approval: %v %v", resp, err)
	}
	resp.Body.Close()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("tpmauthnctl login: %v\n%s%s", err, stdout.String(), told.String())
		}
	case <-time.After(90 * time.Second):
		t.Fatal("tpmauthnctl login did not finish")
	}
	if !strings.Contains(stdout.String(), "TPM credential") || !strings.Contains(stdout.String(), "uid "+strconv.Itoa(personUID)) {
		t.Fatalf("tpmauthnctl login registered no TPM credential:\n%s", stdout.String())
	}
	if st, who := curlAs(t, personUID, h.Socket, api.AgentPathWhoAmI); st != http.StatusOK || who["person"] == nil {
		t.Fatalf("whoami as the person after tpmauthnctl login: %d %v", st, who)
	}
}
