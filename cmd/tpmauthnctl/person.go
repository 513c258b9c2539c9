package main

import (
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/tpmauthn/tpmauthn/api"
	"github.com/tpmauthn/tpmauthn/verifier/record"
)

func (a *app) personCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "person", Aliases: []string{"people"}, Short: "People who logged in through an IdP (or were provisioned by its SCIM)"}
	listCmd := &cobra.Command{
		Use: "list", Short: "List people", Args: cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			var ps []record.Person
			if err := a.call("person.list", nil, &ps); err != nil {
				return err
			}
			return a.print(ps, func(w *tabwriter.Writer) {
				fmt.Fprintln(w, "ID\tIDP\tNAME\tEMAIL\tSTATUS\tGROUPS\tCREDENTIALS\tLAST LOGIN")
				for _, p := range ps {
					row(w, p.ID, p.IdP, orDash(p.Name), orDash(p.Email), personStatus(&p), list(p.Groups), len(p.Credentials), when(p.LastLogin))
				}
			})
		},
	}
	show := &cobra.Command{
		Use: "show ID", Short: "Show one person", Args: cobra.ExactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			var p record.Person
			if err := a.call("person.show", api.IDRequest{ID: args[0]}, &p); err != nil {
				return err
			}
			return a.print(p, func(w *tabwriter.Writer) {
				scim := "-"
				if p.SCIM != nil {
					scim = fmt.Sprintf("userName %q, externalId %q, active %v (%s)", p.SCIM.UserName, p.SCIM.ExternalID, p.SCIM.Active, when(p.SCIM.Updated))
				}
				for _, kv := range [][2]string{{"id", p.ID}, {"idp", p.IdP}, {"subject", p.Subject}, {"issuer", p.Issuer},
					{"name", orDash(p.Name)}, {"email", orDash(p.Email)}, {"status", personStatus(&p)}, {"reason", orDash(p.DisabledReason)},
					{"groups", list(p.Groups)}, {"credentials", list(p.Credentials)}, {"scim", scim},
					{"created", when(p.Created)}, {"last login", when(p.LastLogin)}, {"last check", when(p.LastCheck)}} {
					row(w, kv[0]+":", kv[1])
				}
			})
		},
	}
	var reason string
	disable := &cobra.Command{
		Use:   "disable ID",
		Short: "Offboard a person: disable them, revoke every credential of theirs, kick their sessions, revoke their refresh token",
		Args:  cobra.ExactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			// verifier/offboard.Result's JSON (that package is server code).
			var res struct {
				Revoked    []string `json:"revoked"`
				Kicked     int      `json:"kicked"`
				IdPRevoked bool     `json:"idp_revoked"`
			}
			if err := a.call("person.disable", api.IDRequest{ID: args[0], Reason: reason}, &res); err != nil {
				return err
			}
			return a.print(res, func(w *tabwriter.Writer) {
				fmt.Fprintf(w, "person %s is disabled: %d credentials revoked, %d sessions kicked\n", args[0], len(res.Revoked), res.Kicked)
			})
		},
	}
	enable := &cobra.Command{
		Use:   "enable ID",
		Short: "Let a disabled person log in again (their revoked credentials stay revoked: they register new ones)",
		Args:  cobra.ExactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			var p record.Person
			if err := a.call("person.enable", api.IDRequest{ID: args[0], Reason: reason}, &p); err != nil {
				return err
			}
			return a.print(p, func(w *tabwriter.Writer) { fmt.Fprintf(w, "person %s is %s\n", p.ID, personStatus(&p)) })
		},
	}
	for _, c := range []*cobra.Command{disable, enable} {
		c.Flags().StringVar(&reason, "reason", "", "why (recorded)")
	}
	cmd.AddCommand(listCmd, show, disable, enable)
	return cmd
}

func personStatus(p *record.Person) string {
	if p.Disabled.IsZero() {
		return "active"
	}
	return "disabled since " + p.Disabled.Format(time.RFC3339)
}
