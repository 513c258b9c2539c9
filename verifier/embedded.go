package verifier

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/tpmauthn/tpmauthn/verifier/keys"
)

// StartEmbedded runs a nats-server with the tpmauthn layout (keys.ServerConfig)
// and JetStream in dataDir. o.Listen is host:port (port -1 picks a free one);
// o.Extra adds to the configuration (a tls block).
func StartEmbedded(k *keys.Set, dataDir string, o keys.ServerConfigOptions, log *slog.Logger) (*server.Server, error) {
	listen := o.Listen
	o.StoreDir = filepath.Join(dataDir, "jetstream")
	conf := keys.ServerConfig(k, o)
	path := filepath.Join(dataDir, "nats-server.conf")
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		return nil, fmt.Errorf("embedded nats-server: %w", err)
	}
	opts, err := server.ProcessConfigFile(path)
	if err != nil {
		return nil, fmt.Errorf("embedded nats-server: config: %w", err)
	}
	opts.NoSigs = true
	if opts.ServerName == "" {
		opts.ServerName = "tpmauthn"
	}
	s, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("embedded nats-server: %w", err)
	}
	s.SetLoggerV2(&natsLog{log: log.With("component", "nats-server")}, false, false, false)
	s.Start()
	if !s.ReadyForConnections(15 * time.Second) {
		s.Shutdown()
		return nil, fmt.Errorf("embedded nats-server did not start listening on %s within 15s (is the port in use? set --nats-listen)", listen)
	}
	return s, nil
}

// natsLog routes nats-server's logs to slog.
type natsLog struct{ log *slog.Logger }

func (l *natsLog) Noticef(f string, a ...any) { l.log.Info(fmt.Sprintf(f, a...)) }
func (l *natsLog) Warnf(f string, a ...any)   { l.log.Warn(fmt.Sprintf(f, a...)) }
func (l *natsLog) Fatalf(f string, a ...any)  { l.log.Error(fmt.Sprintf(f, a...)) }
func (l *natsLog) Errorf(f string, a ...any)  { l.log.Error(fmt.Sprintf(f, a...)) }
func (l *natsLog) Debugf(f string, a ...any)  { l.log.Debug(fmt.Sprintf(f, a...)) }
func (l *natsLog) Tracef(f string, a ...any)  { l.log.Debug(fmt.Sprintf(f, a...)) }
