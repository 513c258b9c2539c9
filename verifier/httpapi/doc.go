// Package httpapi is the verifier's HTTP listener for people
// (--http-listen): TLS everywhere beyond loopback, timeouts and size bounds
// on every request, a request rate per client address, and the headers that
// keep its pages out of frames, caches and Referer headers. What it serves
// is the capabilities' (verifier/oidclogin registers the login endpoints);
// it holds no protocol logic.
package httpapi
