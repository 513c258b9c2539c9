package sessions

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/tpmauthn/tpmauthn/verifier/keys"
	"github.com/tpmauthn/tpmauthn/verifier/peers"
	"github.com/tpmauthn/tpmauthn/verifier/record"
)

// A credential record names at most MaxPerCredential live sessions, and a
// session granted by an instance that crashed before its write is named
// nowhere: a revocation that kicked only the record's sessions could leave
// some up. KickAll asks every server for the connections that presented the
// credential's CONNECT nkey (CONNZ, filtered by user) and kicks those too.

// errNoSys: the verifier runs without a system-account connection.
var errNoSys = errors.New("no system connection")

// connzWait is how long KickAll waits for more servers' CONNZ answers after
// the last one (servers answer a PING in parallel, within milliseconds).
const connzWait = 250 * time.Millisecond

// connzLimit bounds the connections one server reports for one nkey.
const connzLimit = 4096

// UserName is a credential session's NATS user name: workload@hostname,
// then the CONNECT nkey, which makes it unique to the credential's lineage
// (hostnames are labels, not unique), so that servers can be asked for
// every session of a lineage (CONNZ by user) and an ended session names its
// credential.
func UserName(workload, hostname, nkey string) string {
	return workload + "@" + hostname + "/" + nkey
}

// nkeyOf is the CONNECT nkey a session's user name ends with, or "".
func nkeyOf(user string) string {
	if i := strings.LastIndexByte(user, '/'); i >= 0 && strings.Contains(user[:i], "@") {
		return user[i+1:]
	}
	return ""
}

// KickAll kicks every live session of the credential: those its record
// names and those any server reports for its lineage's user name. It
// returns how many it kicked and an error naming what it could not kick (or
// ask): the caller must say so, the sessions stay up until they expire.
func (s *Sessions) KickAll(ctx context.Context, c *record.Credential) (int, error) {
	n, kickErr := s.Kick(c)
	hostname := record.NoHost
	if c.Host != "" {
		h, err := s.cfg.Fleet.Host(ctx, c.Host)
		if err != nil {
			return n, errors.Join(kickErr, fmt.Errorf("find the credential's sessions: host %s: %w", c.Host, err))
		}
		hostname = h.Hostname
	}
	swept, err := s.KickUser(UserName(c.Workload, hostname, c.Nkey()))
	n += swept
	if n > 0 {
		s.log.Info("live sessions kicked", "credential", c.ID, "count", n)
	}
	return n, errors.Join(kickErr, err)
}

// KickUser kicks every connection of the workload account with NATS user
// name user, on every server (an enrollment session: enroll-host-<id>,
// enroll-token-<id>), and says what it could not kick or find.
func (s *Sessions) KickUser(user string) (int, error) {
	found, err := s.connsOf(user)
	if err != nil {
		return 0, fmt.Errorf("find the sessions of %s: %w", user, err)
	}
	n := 0
	var failed []error
	for _, conn := range found {
		kicked, err := s.kickOne(conn.server, conn.cid)
		switch {
		case err != nil:
			failed = append(failed, fmt.Errorf("server %s client %d: %w", conn.server, conn.cid, err))
		case kicked:
			n++
		}
	}
	return n, errors.Join(failed...)
}

type serverConn struct {
	server string
	cid    uint64
}

// connsOf asks every server (CONNZ ping in the system account) for the
// connections in the workload account of user name user.
func (s *Sessions) connsOf(user string) ([]serverConn, error) {
	select {
	case <-s.done:
		return nil, ErrClosing
	default:
	}
	var out []serverConn
	err := s.connz(context.Background(), map[string]any{"user": user, "acc": keys.AccountApp, "auth": true}, "sessions of "+user, func(server string, c connzConn) {
		if c.User == user { // the server filtered; check anyway
			out = append(out, serverConn{server, c.CID})
		}
	})
	return out, err
}

// connzConn is the part of a CONNZ connection used here.
type connzConn struct {
	CID  uint64 `json:"cid"`
	User string `json:"authorized_user"`
	Name string `json:"name"`
	IP   string `json:"ip"`
	Port int    `json:"port"`
}

// connz asks every server for the connections filter selects (CONNZ
// options; limit is added) and hands each to each. Silence is not "no
// connections", nor is a server with more than one lookup returns: both
// are errors (fail closed).
func (s *Sessions) connz(ctx context.Context, filter map[string]any, what string, each func(server string, c connzConn)) error {
	filter["limit"] = connzLimit
	body, _ := json.Marshal(filter)
	answered, err := s.pingAll(ctx, "$SYS.REQ.SERVER.PING.CONNZ", body, func(id string, data []byte) (bool, error) {
		var resp struct {
			Data struct {
				Total int         `json:"total"`
				Conns []connzConn `json:"connections"`
			} `json:"data"`
		}
		if json.Unmarshal(data, &resp) != nil {
			return false, nil // not an answer to use: the others may be
		}
		if resp.Data.Total > len(resp.Data.Conns) {
			return false, fmt.Errorf("server %s has %d %s, more than one lookup returns (%d)", id, resp.Data.Total, what, connzLimit)
		}
		for _, c := range resp.Data.Conns {
			each(id, c)
		}
		// A standalone server: it was the only one to ask.
		return s.cfg.Only != "" && id == s.cfg.Only, nil
	})
	switch {
	case err != nil:
		return err
	case !answered:
		return fmt.Errorf("no server answered the lookup of %s", what)
	}
	return nil
}

// kickOne kicks one connection; false if it had left already.
func (s *Sessions) kickOne(server string, cid uint64) (bool, error) {
	body, _ := json.Marshal(map[string]uint64{"cid": cid})
	m, err := s.cfg.Sys.Request("$SYS.REQ.SERVER."+server+".KICK", body, kickTimeout)
	if err != nil {
		return false, err
	}
	var resp struct {
		Error *struct {
			Description string `json:"description"`
		} `json:"error"`
	}
	if json.Unmarshal(m.Data, &resp) == nil && resp.Error != nil {
		return false, nil // no such client: it left already
	}
	return true, nil
}

// AccountConns lists the connections of the callout account (the
// verifiers' own) on every server, for verifier/peers.
func (s *Sessions) AccountConns(ctx context.Context) ([]peers.Conn, error) {
	var out []peers.Conn
	err := s.connz(ctx, map[string]any{"acc": keys.AccountAuth}, "connections in "+keys.AccountAuth, func(server string, c connzConn) {
		out = append(out, peers.Conn{Server: server, CID: c.CID, Name: c.Name, Addr: net.JoinHostPort(c.IP, strconv.Itoa(c.Port))})
	})
	return out, err
}
