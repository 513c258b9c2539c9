package keys

import (
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/nats-io/nats-server/v2/server"
)

// TestWebsocketBlock: the websocket block nats-server reads gives browsers
// a longer auth timeout and the allowed origins, and sets nothing that
// would let a WebSocket client past the auth callout.
func TestWebsocketBlock(t *testing.T) {
	dir := t.TempDir()
	k, _, err := LoadOrCreate(dir)
	if err != nil {
		t.Fatal(err)
	}
	conf := ServerConfig(k, ServerConfigOptions{Listen: "127.0.0.1:-1",
		Websocket: Websocket{Listen: "127.0.0.1:-1", AllowedOrigins: []string{"https://console.example.com"}}})
	path := filepath.Join(dir, "nats.conf")
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	o, err := server.ProcessConfigFile(path)
	if err != nil {
		t.Fatalf("%v\n%s", err, conf)
	}
	ws := o.Websocket
	switch {
	case ws.Port != -1 || !ws.NoTLS:
		t.Fatalf("websocket listen %s:%d no_tls %v", ws.Host, ws.Port, ws.NoTLS)
	case ws.AuthTimeout != DefaultWebsocketAuthTimeout || o.AuthTimeout != 5:
		t.Fatalf("auth timeouts: websocket %v, tcp %v", ws.AuthTimeout, o.AuthTimeout)
	case !slices.Equal(ws.AllowedOrigins, []string{"https://console.example.com"}):
		t.Fatalf("allowed origins %v", ws.AllowedOrigins)
	case ws.Username != "" || ws.Token != "" || ws.NoAuthUser != "" || ws.JWTCookie != "":
		t.Fatalf("the websocket block overrides the auth callout: %+v", ws)
	}
}
