package callout

import (
	"encoding/base64"
	"encoding/json"
	"strings"

	"github.com/nats-io/jwt/v2"
)

// decodeRequest decodes the authorization request JWT that a server sealed
// under serverXKey (Open has checked the box).
//
// The first request under a server xkey has its signature verified in full,
// and binds the xkey to its issuer if the signed claims name that very xkey
// as the server's own (nats-server signs its xkey into every request). Later
// requests under a bound xkey are decoded without the ed25519 verification
// (~50 µs a callout): the box they came in is authenticated (X25519 and
// Poly1305), so only the holder of the server xkey's private key could have
// sealed them, and the bound issuer signed that it holds it. Claims that do
// not name the bound issuer and xkey, or a different JWT header, are
// verified in full as before. checkRequest then validates them as always.
func (s *Server) decodeRequest(tok, serverXKey string) (*jwt.AuthorizationRequestClaims, error) {
	if issuer, header := s.xbox.bound(serverXKey); issuer != "" {
		if rc := decodeBound(tok, issuer, header, serverXKey); rc != nil {
			return rc, nil
		}
	}
	rc, err := jwt.DecodeAuthorizationRequestClaims(tok)
	if err != nil {
		return nil, err
	}
	if rc.Server.XKey == serverXKey && rc.Issuer == rc.Server.ID {
		header, _, _ := strings.Cut(tok, ".")
		s.xbox.bind(serverXKey, rc.Issuer, header)
	}
	return rc, nil
}

// requestVersion is the claims version nats-server signs (jwt/v2's).
const requestVersion = 2

// decodeBound decodes tok's claims without checking its signature, and
// returns them only if they are a request of the bound issuer that names
// xkey as its own, with the header of the request that bound it; nil
// otherwise (then the caller verifies in full).
func decodeBound(tok, issuer, header, xkey string) *jwt.AuthorizationRequestClaims {
	if len(tok) > jwt.MaxTokenSize {
		return nil
	}
	h, rest, ok := strings.Cut(tok, ".")
	if !ok || h != header {
		return nil
	}
	payload, sig, ok := strings.Cut(rest, ".")
	if !ok || sig == "" || strings.Contains(sig, ".") {
		return nil
	}
	data, err := base64.RawURLEncoding.DecodeString(payload)
	if err != nil {
		return nil
	}
	var rc jwt.AuthorizationRequestClaims
	if json.Unmarshal(data, &rc) != nil {
		return nil
	}
	if rc.Type != jwt.AuthorizationRequestClaim || rc.Version != requestVersion ||
		rc.Issuer != issuer || rc.Server.ID != issuer || rc.Server.XKey != xkey {
		return nil
	}
	return &rc
}
