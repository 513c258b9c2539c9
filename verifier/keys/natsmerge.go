package keys

import (
	"errors"
	"fmt"
	"maps"
	"os"
	"reflect"
	"slices"
	"strings"

	"github.com/nats-io/nats-server/v2/conf"
)

// Why MergeServerConfig refuses a file (use errors.Is).
var (
	// ErrNoJetStream: the file does not enable JetStream at the server
	// level, which account AUTH's jetstream: enabled needs.
	ErrNoJetStream = errors.New("no server-level JetStream")
	// ErrMergeConflict: the file already sets something the tpmauthn
	// layout sets, and merging would change what its clients get.
	ErrMergeConflict = errors.New("cannot merge")
)

// Merged is an existing nats-server configuration with the tpmauthn layout
// added (MergeServerConfig).
type Merged struct {
	Config string
	// Notes say what the merge kept and what changes for the clients the
	// file already serves, one sentence each.
	Notes []string
}

// MergeServerConfig adds the tpmauthn layout (ServerConfig) to the
// nats-server configuration file at path: the file's text is kept as it
// is, tpmauthn's accounts go into its accounts block (or a new one), the
// verifier's system user into its system account (or a new one, SYS), and
// the authorization block with the auth callout is appended, with ws's
// websocket block if ws.Listen is set.
//
// The file's accounts and their users keep logging in as before: the
// callout takes only clients that are not users of an account other than
// APP. It refuses what it cannot merge without changing what the file's
// clients get: no server-level JetStream (ErrNoJetStream); an
// authorization block of its own, operator (JWT) mode, accounts named AUTH
// or APP, a websocket block when ws is set, accounts defined in an included
// file (ErrMergeConflict).
func MergeServerConfig(k *Set, path string, ws Websocket) (*Merged, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("merge into %s: %w", path, err)
	}
	text := string(b)
	top, err := conf.ParseFileWithChecks(path)
	if err != nil {
		return nil, fmt.Errorf("merge into %s: parse: %w", path, err)
	}
	if err := mergeable(path, text, top, ws); err != nil {
		return nil, err
	}
	m := &merger{k: k, path: path, text: text}
	if err := m.accounts(top); err != nil {
		return nil, err
	}
	m.appendTail(ws)
	out := m.apply()
	if err := kept(text, out, m.sys); err != nil {
		return nil, fmt.Errorf("merge into %s: %w", path, err)
	}
	m.notes = append(m.notes,
		fmt.Sprintf("every other client (an anonymous one, above all) now goes through the auth callout: "+
			"tpmauthn-verifier lets in tpmauthn's hosts, workloads and people, into account %s, and refuses the rest", AccountApp),
		"check the result with 'nats-server -t -c FILE' before you put it in place of "+path)
	return &Merged{Config: out, Notes: m.notes}, nil
}

// confToken is a value of nats-server's conf parser in pedantic mode: it
// knows where its key is.
type confToken interface {
	Value() any
	Line() int
	Position() int
	SourceFile() string
}

// lookup returns m's value for key, whose case nats-server ignores, and the
// key as the file spells it.
func lookup(m map[string]any, key string) (any, string) {
	for k, v := range m {
		if strings.EqualFold(k, key) {
			if t, ok := v.(confToken); ok {
				return t.Value(), k
			}
			return v, k
		}
	}
	return nil, ""
}

// mergeable checks the file for what the merge cannot add to, all at once.
func mergeable(path, text string, top map[string]any, ws Websocket) error {
	var errs []error
	conflict := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %w: "+format, append([]any{path, ErrMergeConflict}, args...)...))
	}
	if !jetStreamOn(top) {
		errs = append(errs, fmt.Errorf("%s: %w: tpmauthn keeps its records and audit trail in JetStream (account %s); "+
			"add 'jetstream { store_dir: \"/var/lib/nats/jetstream\" }' at the top level of %s, then merge again", path, ErrNoJetStream, AccountAuth, path))
	}
	for _, key := range []string{"operator", "operators", "trusted", "trusted_keys", "resolver"} {
		if v, _ := lookup(top, key); v != nil {
			conflict("%s: the server runs in operator (JWT) mode; nats-config is for accounts configured in the file", key)
		}
	}
	if v, _ := lookup(top, "authorization"); v != nil {
		conflict("it has a top-level authorization block: with the auth callout, its users would be sent to the callout and refused; " +
			"move them into an account of their own (accounts { LEGACY { users: [...] } }), remove the block, then merge again")
	}
	if v, _ := lookup(top, "websocket"); v != nil && ws.Listen != "" {
		conflict("it has a websocket block already: merge without --websocket-listen, and give that block allowed_origins and no user of its own")
	}
	if v, raw := lookup(top, "accounts"); v != nil {
		accts, ok := v.(map[string]any)
		if !ok {
			conflict("accounts is not a block of accounts")
		}
		for _, name := range []string{AccountAuth, AccountApp} {
			if _, ok := accts[name]; ok {
				conflict("it has an account %s already (merged before?): tpmauthn's accounts are %s and %s", name, AccountAuth, AccountApp)
			}
		}
		if t, ok := top[raw].(confToken); ok && t.SourceFile() != path {
			conflict("its accounts block is in %s, an included file: copy it into %s, or add nats-config's accounts to it by hand", t.SourceFile(), path)
		}
	}
	if first := strings.TrimLeft(stripComments(text), " \t\r\n"); strings.HasPrefix(first, "{") {
		conflict("the file is one {...} block: write its keys at the top level")
	}
	return errors.Join(errs...)
}

// jetStreamOn reports whether the server-level jetstream key enables it
// (jetstream: enabled, true, or a block without enabled: false).
func jetStreamOn(top map[string]any) bool {
	v, _ := lookup(top, "jetstream")
	switch v := v.(type) {
	case bool:
		return v
	case string:
		return strings.EqualFold(v, "enabled") || strings.EqualFold(v, "true")
	case map[string]any:
		on, _ := lookup(v, "enabled")
		b, isBool := on.(bool)
		return !isBool || b
	}
	return false
}

// stripComments drops whole-line comments, enough to find the file's first
// token.
func stripComments(text string) string {
	var b strings.Builder
	for line := range strings.Lines(text) {
		if t := strings.TrimSpace(line); !strings.HasPrefix(t, "#") && !strings.HasPrefix(t, "//") {
			b.WriteString(line)
		}
	}
	return b.String()
}

// merger collects insertions into the file's text.
type merger struct {
	k     *Set
	path  string
	text  string
	edits []edit
	tail  strings.Builder
	sys   string // the system account the verifier's user goes into
	notes []string
}

type edit struct {
	at   int
	text string
}

// accounts puts AUTH and APP into the file's accounts block, and the
// verifier's system user into its system account.
func (m *merger) accounts(top map[string]any) error {
	v, raw := lookup(top, "accounts")
	accts, _ := v.(map[string]any)
	names := slices.Sorted(maps.Keys(accts))
	sysName, _ := lookup(top, "system_account")
	m.sys, _ = sysName.(string)
	if _, ok := accts["$SYS"]; m.sys == "" && ok {
		m.sys = "$SYS" // the default system account, configured
	}
	var add strings.Builder
	add.WriteString("  # tpmauthn (tpmauthnctl nats-config --merge)\n")
	add.WriteString(productAccounts(m.k))
	switch sys, ok := accts[m.sys]; {
	case m.sys == "":
		if _, taken := accts[AccountSys]; taken {
			return fmt.Errorf("%s: %w: account %s is not the system account: set system_account, then merge again", m.path, ErrMergeConflict, AccountSys)
		}
		m.sys = AccountSys
		add.WriteString(sysAccount(m.sys, m.k))
		fmt.Fprintf(&m.tail, "system_account: %s\n", m.sys)
		m.notes = append(m.notes, fmt.Sprintf("added system account %s, with the verifier's user (it kicks revoked connections)", m.sys))
	case !ok:
		add.WriteString(sysAccount(m.sys, m.k))
		m.notes = append(m.notes, fmt.Sprintf("defined system account %s, with the verifier's user (it kicks revoked connections)", m.sys))
	default:
		if err := m.addSysUser(sys); err != nil {
			return err
		}
		m.notes = append(m.notes, fmt.Sprintf("added the verifier's user to system account %s (it kicks revoked connections)", m.sys))
	}
	if accts == nil {
		fmt.Fprintf(&m.tail, "accounts {\n%s}\n", add.String())
		return nil
	}
	at, err := openOf(m.text, top[raw], raw, '{')
	if err != nil {
		return fmt.Errorf("%s: %w: %w", m.path, ErrMergeConflict, err)
	}
	m.edits = append(m.edits, edit{at, "\n" + add.String()})
	if len(names) > 0 {
		m.notes = append(m.notes, fmt.Sprintf("kept accounts %s: their users log in as before (the callout takes no user of an account other than %s)",
			strings.Join(names, ", "), AccountApp))
	}
	return nil
}

// addSysUser inserts the verifier's user into the users list of the
// existing system account (its token sys), or gives it one.
func (m *merger) addSysUser(sys any) error {
	t, _ := sys.(confToken)
	body, _ := t.Value().(map[string]any)
	if body == nil {
		return fmt.Errorf("%s: %w: system account %s is not a block", m.path, ErrMergeConflict, m.sys)
	}
	if users, raw := lookup(body, "users"); users != nil {
		at, err := openOf(m.text, body[raw], raw, '[')
		if err != nil {
			return fmt.Errorf("%s: %w: %w", m.path, ErrMergeConflict, err)
		}
		m.edits = append(m.edits, edit{at, "\n      " + sysUser(m.k) + "\n"})
		return nil
	}
	at, err := openOf(m.text, sys, m.sys, '{')
	if err != nil {
		return fmt.Errorf("%s: %w: %w", m.path, ErrMergeConflict, err)
	}
	m.edits = append(m.edits, edit{at, "\n    users: [\n      " + sysUser(m.k) + "\n    ]\n"})
	return nil
}

// appendTail adds the authorization block (and the websocket one) after
// the file's last line.
func (m *merger) appendTail(ws Websocket) {
	m.tail.WriteString(authorizationBlock(m.k))
	if ws.Listen != "" {
		m.tail.WriteString(ws.block())
	}
}

// apply returns the text with the edits made and the tail appended.
func (m *merger) apply() string {
	slices.SortFunc(m.edits, func(a, b edit) int { return b.at - a.at })
	out := m.text
	for _, e := range m.edits {
		out = out[:e.at] + e.text + out[e.at:]
	}
	if out != "" && !strings.HasSuffix(out, "\n") {
		out += "\n"
	}
	return out + "\n" + configHeader + m.tail.String()
}

// openOf returns the offset just after the '{' or '[' that opens the value
// of key, whose token (from ParseFileWithChecks) is v. The parser gives the
// key's line and, roughly, its column: the key is looked for from a little
// before that column.
func openOf(text string, v any, key string, open byte) (int, error) {
	t, ok := v.(confToken)
	if !ok {
		return 0, fmt.Errorf("%s: no position", key)
	}
	start := 0
	for range t.Line() - 1 {
		i := strings.IndexByte(text[start:], '\n')
		if i < 0 {
			return 0, fmt.Errorf("%s: line %d: past the end", key, t.Line())
		}
		start += i + 1
	}
	line, _, _ := strings.Cut(text[start:], "\n")
	for from := max(0, t.Position()-3); from < len(line); from++ {
		i := strings.Index(line[from:], key)
		if i < 0 {
			break
		}
		from += i
		end := from + len(key)
		if (from > 0 && !strings.ContainsRune(" \t{,\"'", rune(line[from-1]))) ||
			(end < len(line) && !strings.ContainsRune(" \t:=\"'{[", rune(line[end]))) {
			continue // part of a longer word
		}
		// The key, quoted or not, then = or :, then the value's bracket
		// (which may start the next line).
		j := start + end
		if j < len(text) && (text[j] == '"' || text[j] == '\'') {
			j++
		}
		j = skipBlank(text, j)
		if j < len(text) && (text[j] == ':' || text[j] == '=') {
			j = skipBlank(text, j+1)
		}
		if j < len(text) && text[j] == open {
			return j + 1, nil
		}
		return 0, fmt.Errorf("%s (line %d): no %q after the key: write the key and its %q together", key, t.Line(), open, open)
	}
	return 0, fmt.Errorf("%s: not found on line %d", key, t.Line())
}

func skipBlank(text string, j int) int {
	for j < len(text) && strings.ContainsRune(" \t\r\n", rune(text[j])) {
		j++
	}
	return j
}

// kept checks that the merged text still configures everything the file
// did: every top-level key and every account as they were, the system
// account with one user more. A file whose includes do not resolve from
// here (relative paths) is not checked.
func kept(before, after, sys string) error {
	old, err := conf.Parse(before)
	if err != nil {
		return nil
	}
	cur, err := conf.Parse(after)
	if err != nil {
		return fmt.Errorf("the merged configuration does not parse: %w", err)
	}
	for key, v := range old {
		accts, ok := v.(map[string]any)
		if !strings.EqualFold(key, "accounts") || !ok {
			if !reflect.DeepEqual(v, cur[key]) {
				return fmt.Errorf("%s changed", key)
			}
			continue
		}
		now, _ := cur[key].(map[string]any)
		for name, a := range accts {
			if name == sys {
				a, now[name] = withoutUsers(a), withoutUsers(now[name])
			}
			if !reflect.DeepEqual(a, now[name]) {
				return fmt.Errorf("account %s changed", name)
			}
		}
	}
	return nil
}

// withoutUsers is an account's block without its users.
func withoutUsers(a any) any {
	m, ok := a.(map[string]any)
	if !ok {
		return a
	}
	out := maps.Clone(m)
	for k := range out {
		if strings.EqualFold(k, "users") {
			delete(out, k)
		}
	}
	return out
}
