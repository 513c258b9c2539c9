package callout

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nkeys"
)

// The precomputed box must speak exactly what nkeys (and so nats-server)
// speaks, both ways.
func TestXKeyBoxInteropWithNKeys(t *testing.T) {
	ours, err := nkeys.CreateCurveKeys()
	if err != nil {
		t.Fatal(err)
	}
	server, err := nkeys.CreateCurveKeys()
	if err != nil {
		t.Fatal(err)
	}
	ourPub, _ := ours.PublicKey()
	serverPub, _ := server.PublicKey()
	b, err := newXKeyBox(ours)
	if err != nil {
		t.Fatal(err)
	}
	for _, size := range []int{1, 100, 4096} {
		msg := bytes.Repeat([]byte{byte(size)}, size)
		req, err := server.Seal(msg, ourPub)
		if err != nil {
			t.Fatal(err)
		}
		got, err := b.Open(req, serverPub)
		if err != nil || !bytes.Equal(got, msg) {
			t.Fatalf("open a message nkeys sealed (%d bytes): %v", size, err)
		}
		resp, err := b.Seal(msg, serverPub)
		if err != nil {
			t.Fatal(err)
		}
		got, err = server.Open(resp, ourPub)
		if err != nil || !bytes.Equal(got, msg) {
			t.Fatalf("nkeys opens our sealed message (%d bytes): %v", size, err)
		}
	}
	if len(b.shared) != 1 {
		t.Fatalf("one server, %d cached keys", len(b.shared))
	}
}

func TestXKeyBoxRejects(t *testing.T) {
	ours, _ := nkeys.CreateCurveKeys()
	server, _ := nkeys.CreateCurveKeys()
	other, _ := nkeys.CreateCurveKeys()
	ourPub, _ := ours.PublicKey()
	serverPub, _ := server.PublicKey()
	otherPub, _ := other.PublicKey()
	b, _ := newXKeyBox(ours)
	sealed, _ := server.Seal([]byte("request"), ourPub)
	tampered := bytes.Clone(sealed)
	tampered[len(tampered)-1] ^= 1
	user, _ := nkeys.CreateUser()
	userPub, _ := user.PublicKey()
	cases := []struct {
		name   string
		msg    []byte
		sender string
		want   error
	}{
		{"wrong sender", sealed, otherPub, nkeys.ErrCouldNotDecrypt},
		{"tampered", tampered, serverPub, nkeys.ErrCouldNotDecrypt},
		{"truncated", sealed[:20], serverPub, errXKeyFormat},
		{"plain JWT", []byte("eyJ0eXAiOiJKV1QiLCJhbGciOiJlZDI1NTE5LW5rZXkifQ.e30.sig"), serverPub, errXKeyFormat},
		{"sender is not a curve key", sealed, userPub, nkeys.ErrInvalidSender},
		{"sender garbage", sealed, "Xnot-a-key", nkeys.ErrInvalidSender},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if _, err := b.Open(c.msg, c.sender); !errors.Is(err, c.want) {
				t.Fatalf("got %v, want %v", err, c.want)
			}
		})
	}
	if _, err := b.Seal([]byte("x"), "garbage"); !errors.Is(err, nkeys.ErrInvalidSender) {
		t.Fatalf("seal to garbage: %v", err)
	}
}

func BenchmarkXKeyOpenSeal(b *testing.B) {
	ours, _ := nkeys.CreateCurveKeys()
	server, _ := nkeys.CreateCurveKeys()
	ourPub, _ := ours.PublicKey()
	serverPub, _ := server.PublicKey()
	req, _ := server.Seal(bytes.Repeat([]byte("r"), 1500), ourPub)
	resp := bytes.Repeat([]byte("s"), 1000)
	b.Run("nkeys", func(b *testing.B) {
		for b.Loop() {
			if _, err := ours.Open(req, serverPub); err != nil {
				b.Fatal(err)
			}
			if _, err := ours.Seal(resp, serverPub); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("precomputed", func(b *testing.B) {
		x, _ := newXKeyBox(ours)
		for b.Loop() {
			if _, err := x.Open(req, serverPub); err != nil {
				b.Fatal(err)
			}
			if _, err := x.Seal(resp, serverPub); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// An authorization request that is not sealed to the verifier's xkey is
// refused unanswered, however well-formed: every server of the layout seals.
func TestUnsealedRequestRefused(t *testing.T) {
	xk, err := nkeys.CreateCurveKeys()
	if err != nil {
		t.Fatal(err)
	}
	srv, err := New(Config{XKey: xk})
	if err != nil {
		t.Fatal(err)
	}
	serverKP, _ := nkeys.CreateServer()
	serverID, _ := serverKP.PublicKey()
	user, _ := nkeys.CreateUser()
	userPub, _ := user.PublicKey()
	rc := jwt.NewAuthorizationRequestClaims(userPub)
	rc.Audience = "nats-authorization-request"
	rc.Server.ID = serverID
	rc.UserNkey = userPub
	tok, err := rc.Encode(serverKP)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := srv.open([]byte(tok), ""); err == nil || !strings.Contains(err.Error(), "unsealed") {
		t.Fatalf("unsealed request: %v, want refused", err)
	}
	serverXK, _ := nkeys.CreateCurveKeys()
	serverXPub, _ := serverXK.PublicKey()
	ourPub, _ := xk.PublicKey()
	sealed, err := serverXK.Seal([]byte(tok), ourPub)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := srv.open(sealed, serverXPub); err != nil || got.UserNkey != userPub {
		t.Fatalf("the same request sealed: %v", err)
	}
}
