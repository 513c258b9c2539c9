// Package clidocs generates a command's man pages and shell completions
// from its cobra commands (make man; the Debian packages install them), so
// they never drift from the flags the binary has.
package clidocs

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"
	"github.com/spf13/cobra/doc"
)

// Command is the hidden "docs" subcommand of root: docs DIR writes
// DIR/man1/*.1 and DIR/completions/{bash,zsh,fish}.
func Command(root *cobra.Command) *cobra.Command {
	return &cobra.Command{
		Use:    "docs DIR",
		Short:  "Write the man pages and shell completions of " + root.Name() + " under DIR",
		Hidden: true,
		Args:   cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return Write(root, args[0])
		},
	}
}

// Write generates root's man pages and completions under dir.
func Write(root *cobra.Command, dir string) error {
	man := filepath.Join(dir, "man1")
	comp := filepath.Join(dir, "completions")
	for _, d := range []string{man, comp} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	root.DisableAutoGenTag = true // reproducible: no generation date
	hdr := &doc.GenManHeader{Title: root.Name(), Section: "1", Source: "tpmauthn", Manual: "tpmauthn manual"}
	if err := doc.GenManTree(root, hdr, man); err != nil {
		return fmt.Errorf("man pages: %w", err)
	}
	name := root.Name()
	for _, c := range []struct {
		file string
		gen  func(string) error
	}{
		{filepath.Join(comp, name+".bash"), func(f string) error { return root.GenBashCompletionFileV2(f, true) }},
		{filepath.Join(comp, "_"+name), root.GenZshCompletionFile},
		{filepath.Join(comp, name+".fish"), func(f string) error { return root.GenFishCompletionFile(f, true) }},
	} {
		if err := c.gen(c.file); err != nil {
			return fmt.Errorf("completion %s: %w", c.file, err)
		}
	}
	return nil
}
