package policy

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"time"
)

// ErrInvalid marks a policy the verifier refuses to load (the people
// section's checks wrap it; callers branch with errors.Is).
var ErrInvalid = errors.New("invalid policy")

// People is the policy's people: section: the identity providers the
// verifier is the OpenID Connect relying party of, how long a login lasts,
// and which roles a person gets from their IdP groups.
type People struct {
	// LoginTTL is how long a login lasts (a person's device credential
	// expires with it): DefaultLoginTTL when zero.
	LoginTTL time.Duration `yaml:"login_ttl"`
	// RecheckInterval is how often a logged-in person is checked with their
	// IdP again (DefaultRecheckInterval when zero; at most LoginTTL).
	RecheckInterval time.Duration   `yaml:"recheck_interval"`
	IdPs            []IdP           `yaml:"idps"`
	Bindings        []PersonBinding `yaml:"bindings"`
}

// IdP is one OpenID provider.
type IdP struct {
	// Name is what people and operators call it: a lower-case token, part of
	// the login URL (/login/NAME) and of every person's ID.
	Name string `yaml:"name"`
	// Issuer is the provider's issuer URL, exactly as its discovery document
	// states it (a trailing slash matters: OpenID Discovery §4.3).
	Issuer   string `yaml:"issuer"`
	ClientID string `yaml:"client_id"`
	// The client secret comes from a file or an environment variable, never
	// the policy file itself (which operators share and review).
	ClientSecretFile string `yaml:"client_secret_file"`
	ClientSecretEnv  string `yaml:"client_secret_env"`
	// Scopes requested (default openid, profile, email; openid is always
	// added).
	Scopes []string `yaml:"scopes"`
	// SubjectClaim names the person at this IdP (default "sub"; Entra ID:
	// "oid", as its sub is per application).
	SubjectClaim string `yaml:"subject_claim"`
	// GroupsClaim is the ID token claim that lists the person's groups
	// (default "groups").
	GroupsClaim string `yaml:"groups_claim"`
	// SCIMTokenFile or SCIMTokenEnv hold the bearer token this IdP's SCIM
	// client presents at /scim/v2/NAME/ (neither: no SCIM for this IdP).
	// Like the client secret, never the policy file itself.
	SCIMTokenFile string `yaml:"scim_token_file"`
	SCIMTokenEnv  string `yaml:"scim_token_env"`
	// SCIMSubject is the SCIM User attribute that carries the person's
	// subject claim value: "externalId" (default; Okta sends its user ID,
	// the OIDC sub, and Entra ID the objectId, the oid claim) or
	// "userName".
	SCIMSubject string `yaml:"scim_subject"`
	// SCIMGroupName is the SCIM Group attribute that carries the name the
	// groups claim lists: "displayName" (default; Okta's groups claim lists
	// names) or "externalId" (Entra ID lists group object IDs).
	SCIMGroupName string `yaml:"scim_group_name"`
}

// SCIM attribute names of People.IdPs[].SCIMSubject and SCIMGroupName.
const (
	SCIMExternalID  = "externalId"
	SCIMUserName    = "userName"
	SCIMDisplayName = "displayName"
)

// PersonBinding grants Roles to the people of IdP who are in any of Groups
// (every person of it, if empty), when Require holds. IdP may be left out
// only when the policy has one IdP.
type PersonBinding struct {
	IdP     string      `yaml:"idp"`
	Groups  []string    `yaml:"groups"`
	Roles   []string    `yaml:"roles"`
	Require Requirement `yaml:"require"`
}

// Requirement is what a person's credential must be for a binding to apply.
type Requirement struct {
	// Assurance is AssuranceHardware (a TPM or a device-bound passkey),
	// AssuranceSoftware, or empty (either).
	Assurance string `yaml:"assurance"`
}

// Assurance levels of a person's credential, weakest first.
const (
	AssuranceSoftware = "software"
	AssuranceHardware = "hardware"
)

// Defaults of the people section.
const (
	DefaultLoginTTL        = 12 * time.Hour
	DefaultRecheckInterval = 10 * time.Minute
	DefaultSubjectClaim    = "sub"
	DefaultGroupsClaim     = "groups"
)

// idpName: a lower-case token without '_' or '.', so that a person's ID
// (NAME_hash) and subjects built from it split unambiguously.
var idpName = regexp.MustCompile(`^[a-z][a-z0-9-]{0,31}$`)

// claimName: a JSON member name an operator may reasonably mean (no paths:
// nested claims are not followed).
var claimName = regexp.MustCompile(`^[A-Za-z0-9_:/.\-]{1,128}$`)

// reassignableClaims name a person only until the IdP gives the value to
// someone else (an email or user name freed and reused, a UPN renamed):
// refused as subject claims (OpenID Connect Core §5.7: only sub, with
// iss, is stable and never reassigned).
var reassignableClaims = map[string]bool{
	"email": true, "preferred_username": true, "upn": true, "unique_name": true, "name": true,
	"nickname": true, "given_name": true, "family_name": true, "phone_number": true, "login": true, "username": true,
}

// setDefaults fills the documented defaults.
func (pp *People) setDefaults() {
	if pp.LoginTTL == 0 {
		pp.LoginTTL = DefaultLoginTTL
	}
	if pp.RecheckInterval == 0 {
		pp.RecheckInterval = min(DefaultRecheckInterval, pp.LoginTTL)
	}
	for i := range pp.IdPs {
		idp := &pp.IdPs[i]
		if len(idp.Scopes) == 0 {
			idp.Scopes = []string{"openid", "profile", "email"}
		} else if !slices.Contains(idp.Scopes, "openid") {
			idp.Scopes = append([]string{"openid"}, idp.Scopes...)
		}
		if idp.SubjectClaim == "" {
			idp.SubjectClaim = DefaultSubjectClaim
		}
		if idp.GroupsClaim == "" {
			idp.GroupsClaim = DefaultGroupsClaim
		}
		if idp.SCIMSubject == "" {
			idp.SCIMSubject = SCIMExternalID
		}
		if idp.SCIMGroupName == "" {
			idp.SCIMGroupName = SCIMDisplayName
		}
	}
}

// validate reports every problem of the section, each naming its key.
func (pp *People) validate(roles map[string]Role) []error {
	var errs []error
	if pp.LoginTTL < time.Minute || pp.LoginTTL > 30*24*time.Hour {
		errs = append(errs, fmt.Errorf("%w: people.login_ttl %v: between 1m and 720h", ErrInvalid, pp.LoginTTL))
	}
	if pp.RecheckInterval < time.Minute || pp.RecheckInterval > pp.LoginTTL {
		errs = append(errs, fmt.Errorf("%w: people.recheck_interval %v: between 1m and people.login_ttl", ErrInvalid, pp.RecheckInterval))
	}
	seen := map[string]bool{}
	for i, idp := range pp.IdPs {
		errs = append(errs, idp.validate(fmt.Sprintf("people.idps[%d]", i))...)
		if seen[idp.Name] {
			errs = append(errs, fmt.Errorf("%w: people.idps[%d]: name %q is used twice", ErrInvalid, i, idp.Name))
		}
		seen[idp.Name] = true
	}
	for i, b := range pp.Bindings {
		at := fmt.Sprintf("people.bindings[%d]", i)
		if b.IdP == "" && len(pp.IdPs) > 1 {
			// Group names are each IdP's own: "admins" at one IdP is not
			// "admins" at another, whoever can create groups there.
			errs = append(errs, fmt.Errorf("%w: %s: with more than one IdP under people.idps, say which IdP's groups the binding means (idp: NAME)", ErrInvalid, at))
		}
		if b.IdP != "" && !seen[b.IdP] {
			errs = append(errs, fmt.Errorf("%w: %s: idp %q is not defined under people.idps", ErrInvalid, at, b.IdP))
		}
		if len(b.Roles) == 0 {
			errs = append(errs, fmt.Errorf("%w: %s: no roles", ErrInvalid, at))
		}
		for _, r := range b.Roles {
			if _, ok := roles[r]; !ok {
				errs = append(errs, fmt.Errorf("%w: %s: role %q is not defined under roles", ErrInvalid, at, r))
			}
		}
		for _, g := range b.Groups {
			if g == "" {
				errs = append(errs, fmt.Errorf("%w: %s: an empty group name", ErrInvalid, at))
			}
		}
		switch b.Require.Assurance {
		case "", AssuranceSoftware, AssuranceHardware:
		default:
			errs = append(errs, fmt.Errorf("%w: %s: require.assurance %q: want hardware or software", ErrInvalid, at, b.Require.Assurance))
		}
	}
	return errs
}

func (idp *IdP) validate(at string) []error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: %s: "+format, append([]any{ErrInvalid, at}, args...)...))
	}
	if !idpName.MatchString(idp.Name) {
		bad("name %q: lower-case letters, digits and '-', starting with a letter, at most 32", idp.Name)
	}
	if err := checkIssuer(idp.Issuer); err != nil {
		bad("issuer %q: %v", idp.Issuer, err)
	}
	if idp.ClientID == "" {
		bad("client_id: required (the client ID the IdP gave the verifier)")
	}
	if (idp.ClientSecretFile == "") == (idp.ClientSecretEnv == "") {
		bad("give exactly one of client_secret_file and client_secret_env (the secret stays out of the policy file)")
	}
	for _, s := range idp.Scopes {
		if s == "" || strings.ContainsAny(s, " \t\r\n\"") {
			bad("scope %q: one token per entry", s)
		}
	}
	if !claimName.MatchString(idp.SubjectClaim) {
		bad("subject_claim %q: a claim name", idp.SubjectClaim)
	} else if reassignableClaims[strings.ToLower(idp.SubjectClaim)] {
		bad("subject_claim %q: the IdP may give it to someone else later (a renamed or recycled account would become this person); use an immutable ID: sub, or oid for Entra ID", idp.SubjectClaim)
	}
	if !claimName.MatchString(idp.GroupsClaim) {
		bad("groups_claim %q: a claim name", idp.GroupsClaim)
	}
	if idp.SCIMTokenFile != "" && idp.SCIMTokenEnv != "" {
		bad("give at most one of scim_token_file and scim_token_env")
	}
	if idp.SCIMSubject != SCIMExternalID && idp.SCIMSubject != SCIMUserName {
		bad("scim_subject %q: externalId or userName", idp.SCIMSubject)
	}
	if idp.SCIMGroupName != SCIMDisplayName && idp.SCIMGroupName != SCIMExternalID {
		bad("scim_group_name %q: displayName or externalId", idp.SCIMGroupName)
	}
	return errs
}

// checkIssuer accepts an https URL, or http on loopback (a development
// IdP): anything else would let the network path forge discovery.
func checkIssuer(s string) error {
	u, err := url.Parse(s)
	if err != nil || u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return errors.New("want an absolute https URL without query or fragment")
	}
	switch u.Scheme {
	case "https":
		return nil
	case "http":
		if h := u.Hostname(); h == "localhost" || net.ParseIP(h).IsLoopback() {
			return nil
		}
		return errors.New("http only on loopback: the discovery document and keys must come over TLS")
	}
	return errors.New("want https")
}

// IdP returns the IdP called name, or nil.
func (pp *People) IdP(name string) *IdP {
	if pp == nil {
		return nil
	}
	for i := range pp.IdPs {
		if pp.IdPs[i].Name == name {
			return &pp.IdPs[i]
		}
	}
	return nil
}

// Person is who a person's session is for, as the bindings see them.
type Person struct {
	IdP    string
	Groups []string
	// Assurance is the credential's: AssuranceHardware or AssuranceSoftware.
	Assurance string
	// Synced: the credential is a synced passkey, or a session key one
	// certified (roles with allow_synced: false do not apply).
	Synced bool
	// SessionKey: the credential is a browser's session key (roles with
	// per_connect: passkey do not apply).
	SessionKey bool
}

// RolesForPerson returns the roles the people bindings grant, sorted and
// unique. A binding that requires hardware does not apply to a software
// credential; an unknown assurance counts as the weakest. A role that
// refuses synced passkeys, or wants a passkey on every connect, is left out
// for a credential that is one, or a session key.
func (p *Policy) RolesForPerson(who Person) []string {
	if p.People == nil || p.People.IdP(who.IdP) == nil {
		// An IdP removed from the policy takes its people's roles with it.
		return nil
	}
	var out []string
	for _, b := range p.People.Bindings {
		if b.IdP != "" && b.IdP != who.IdP {
			continue
		}
		if len(b.Groups) > 0 && !slices.ContainsFunc(b.Groups, func(g string) bool { return slices.Contains(who.Groups, g) }) {
			continue
		}
		if b.Require.Assurance == AssuranceHardware && who.Assurance != AssuranceHardware {
			continue
		}
		for _, name := range b.Roles {
			r := p.Roles[name]
			if (who.Synced && r.AllowSynced != nil && !*r.AllowSynced) || (who.SessionKey && r.PerConnect == PerConnectPasskey) {
				continue
			}
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}
