package callout

import (
	"encoding/base64"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nkeys"
)

// requestParty is a server's keys, or an attacker's posing as one.
type requestParty struct {
	kp    nkeys.KeyPair // signs requests
	id    string
	xk    nkeys.KeyPair // seals them
	xpub  string
	claim string // the xkey the signed claims name (default xpub)
}

func newParty(t *testing.T) *requestParty {
	t.Helper()
	kp, _ := nkeys.CreateServer()
	id, _ := kp.PublicKey()
	xk, _ := nkeys.CreateCurveKeys()
	xpub, _ := xk.PublicKey()
	return &requestParty{kp: kp, id: id, xk: xk, xpub: xpub, claim: xpub}
}

// token is a request signed by the party, for user.
func (p *requestParty) token(t *testing.T, user string) string {
	t.Helper()
	rc := jwt.NewAuthorizationRequestClaims(user)
	rc.Audience = "nats-authorization-request"
	rc.Server.ID, rc.Server.XKey = p.id, p.claim
	rc.UserNkey = user
	rc.Expires = time.Now().Add(time.Minute).Unix()
	tok, err := rc.Encode(p.kp)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// seal seals tok with the party's xkey to the verifier's.
func (p *requestParty) seal(t *testing.T, tok, to string) []byte {
	t.Helper()
	b, err := p.xk.Seal([]byte(tok), to)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// forge is tok with its claims' user changed and the signature kept: a
// request nobody signed.
func forge(t *testing.T, tok, user string) string {
	t.Helper()
	parts := strings.Split(tok, ".")
	data, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	var rc jwt.AuthorizationRequestClaims
	if err := json.Unmarshal(data, &rc); err != nil {
		t.Fatal(err)
	}
	rc.UserNkey, rc.Subject = user, user
	parts[1] = encodeSegment(t, rc)
	return strings.Join(parts, ".")
}

// A server xkey is bound to the server that signed a request naming it, and
// only requests sealed under that xkey skip the signature check; everything
// else is verified in full.
func TestAttackRequestXKeyBinding(t *testing.T) {
	ours, _ := nkeys.CreateCurveKeys()
	ourPub, _ := ours.PublicKey()
	srv, err := New(Config{XKey: ours})
	if err != nil {
		t.Fatal(err)
	}
	server, attacker := newParty(t), newParty(t)
	user, _ := nkeys.CreateUser()
	userPub, _ := user.PublicKey()
	victim, _ := nkeys.CreateUser()
	victimPub, _ := victim.PublicKey()

	// Before any binding: a forged request under the attacker's own xkey,
	// naming the server as issuer, fails its signature check.
	posing := *attacker
	posing.claim = attacker.xpub
	forged := forge(t, server.token(t, userPub), victimPub)
	if _, err := srv.open(attacker.seal(t, forged, ourPub), attacker.xpub); err == nil {
		t.Fatal("a forged request under an unbound xkey was accepted")
	}
	// A genuine request of the server, re-sealed by the attacker under
	// their own xkey: verified in full (as before), but it names the
	// server's xkey, so the attacker's is not bound to the server.
	if _, err := srv.open(attacker.seal(t, server.token(t, userPub), ourPub), attacker.xpub); err != nil {
		t.Fatalf("a genuine request re-sealed: %v", err)
	}
	if issuer, _ := srv.xbox.bound(attacker.xpub); issuer != "" {
		t.Fatalf("the attacker's xkey is bound to %s", issuer)
	}
	if _, err := srv.open(attacker.seal(t, forge(t, server.token(t, userPub), victimPub), ourPub), attacker.xpub); err == nil {
		t.Fatal("a forged request under the attacker's xkey was accepted after a re-sealed genuine one")
	}
	// The attacker's own signed request names their xkey: it binds their
	// xkey to their own server key, never to the server's.
	if _, err := srv.open(attacker.seal(t, posing.token(t, userPub), ourPub), attacker.xpub); err != nil {
		t.Fatalf("the attacker's own request: %v", err)
	}
	if issuer, _ := srv.xbox.bound(attacker.xpub); issuer != attacker.id {
		t.Fatalf("the attacker's xkey is bound to %q, want their own key", issuer)
	}
	if _, err := srv.open(attacker.seal(t, forge(t, server.token(t, userPub), victimPub), ourPub), attacker.xpub); err == nil {
		t.Fatal("a request naming the server, sealed under the attacker's bound xkey, was accepted unverified")
	}

	// The server's first request binds its xkey; its next ones are
	// decoded without the signature check, and say what was signed.
	if _, err := srv.open(server.seal(t, server.token(t, userPub), ourPub), server.xpub); err != nil {
		t.Fatal(err)
	}
	if issuer, _ := srv.xbox.bound(server.xpub); issuer != server.id {
		t.Fatalf("the server's xkey is bound to %q, want %s", issuer, server.id)
	}
	rc, err := srv.open(server.seal(t, server.token(t, victimPub), ourPub), server.xpub)
	if err != nil || rc.UserNkey != victimPub || rc.Issuer != server.id {
		t.Fatalf("a bound server's request: %+v, %v", rc, err)
	}
	// Under the bound xkey, claims of another issuer are verified in full.
	other := newParty(t)
	other.claim = server.xpub
	if _, err := srv.open(server.seal(t, forge(t, other.token(t, userPub), victimPub), ourPub), server.xpub); err == nil {
		t.Fatal("claims of another issuer under a bound xkey were accepted unverified")
	}
	// Without the server's xkey nobody seals under it.
	if _, err := srv.open(attacker.seal(t, server.token(t, userPub), ourPub), server.xpub); err == nil {
		t.Fatal("a request sealed by another key opened under the server's xkey")
	}
}

func encodeSegment(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return base64.RawURLEncoding.EncodeToString(b)
}
