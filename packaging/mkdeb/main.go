// Command mkdeb builds the Debian packages (make deb): tpmauthn-agent,
// tpmauthn-verifier and tpmauthnctl, from binaries it builds for them
// (stripped, position-independent) and the man pages and completions those
// binaries generate, with nfpm (github.com/goreleaser/nfpm: ar, tar,
// control files, conffiles and md5sums written the way dpkg expects, rather
// than by hand). Each package is described by packaging/NAME.nfpm.yaml.
package main

import (
	"compress/gzip"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/goreleaser/nfpm/v2"
	_ "github.com/goreleaser/nfpm/v2/deb" // registers the deb packager
)

var packages = []string{"tpmauthn-agent", "tpmauthn-verifier", "tpmauthnctl"}

func main() {
	version := flag.String("version", "", "the packages' version (Debian: starts with a digit); several, comma-separated, package the same build under each (the upgrade test)")
	out := flag.String("out", "bin/deb", "where to write the .deb files")
	flag.Parse()
	if err := run(*version, *out); err != nil {
		fmt.Fprintln(os.Stderr, "mkdeb:", err)
		os.Exit(1)
	}
}

func run(versions, out string) error {
	for _, v := range strings.Split(versions, ",") {
		if v == "" || v[0] < '0' || v[0] > '9' {
			return fmt.Errorf("-version %q: a Debian version starts with a digit", v)
		}
	}
	pkgdir, err := filepath.Abs("packaging")
	if err != nil {
		return err
	}
	stage, err := os.MkdirTemp("", "mkdeb")
	if err != nil {
		return err
	}
	defer os.RemoveAll(stage)
	bin, units, docs := filepath.Join(stage, "bin"), filepath.Join(stage, "units"), filepath.Join(stage, "docs")
	if err := buildBinaries(bin, docs); err != nil {
		return err
	}
	systemd := filepath.Join(filepath.Dir(pkgdir), "systemd")
	if err := stageUnits(systemd, units); err != nil {
		return err
	}
	if err := gzipPages(filepath.Join(docs, "man1")); err != nil {
		return err
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	for _, version := range strings.Split(versions, ",") {
		for _, name := range packages {
			if err := writeChangelog(filepath.Join(stage, name+".changelog.gz"), name, version); err != nil {
				return err
			}
		}
		env := map[string]string{"VERSION": version, "BIN": bin, "UNITS": units, "DOCS": docs, "PKGDIR": pkgdir, "SYSTEMD": systemd, "STAGE": stage}
		for _, name := range packages {
			target, err := build(filepath.Join(pkgdir, name+".nfpm.yaml"), out, env)
			if err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
			fmt.Println(target)
		}
	}
	return nil
}

// buildBinaries builds the packaged commands (stripped, PIE, as Debian
// wants them) and has them write their man pages and completions.
func buildBinaries(bin, docs string) error {
	args := []string{"build", "-trimpath", "-buildvcs=auto", "-buildmode=pie", "-ldflags=-s -w", "-o", bin + "/"}
	for _, p := range packages {
		args = append(args, "./cmd/"+p)
	}
	cmd := exec.Command("go", args...)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("go build: %w", err)
	}
	for _, p := range packages {
		if out, err := exec.Command(filepath.Join(bin, p), "docs", docs).CombinedOutput(); err != nil {
			return fmt.Errorf("%s docs: %w\n%s", p, err, out)
		}
	}
	return nil
}

// writeChangelog writes a native package's changelog.gz in Debian's format.
func writeChangelog(path, name, version string) error {
	text := fmt.Sprintf("%s (%s) unstable; urgency=medium\n\n  * Built from the tpmauthn repository; its git history is the change log.\n\n -- tpmauthn <tpmauthn@example.com>  %s\n",
		name, version, time.Now().UTC().Format(time.RFC1123Z))
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	zw, _ := gzip.NewWriterLevel(f, gzip.BestCompression)
	if _, err := zw.Write([]byte(text)); err != nil {
		f.Close()
		return err
	}
	if err := zw.Close(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func build(config, out string, env map[string]string) (string, error) {
	// The whole file is expanded (nfpm itself expands only some fields).
	raw, err := os.ReadFile(config)
	if err != nil {
		return "", err
	}
	expanded := os.Expand(string(raw), func(k string) string { return env[k] })
	cfg, err := nfpm.ParseWithEnvMapping(strings.NewReader(expanded), nil)
	if err != nil {
		return "", err
	}
	info, err := cfg.Get("deb")
	if err != nil {
		return "", err
	}
	info = nfpm.WithDefaults(info)
	pkgr, err := nfpm.Get("deb")
	if err != nil {
		return "", err
	}
	target := filepath.Join(out, pkgr.ConventionalFileName(info))
	f, err := os.Create(target)
	if err != nil {
		return "", err
	}
	info.Target = target
	if err := pkgr.Package(info, f); err != nil {
		f.Close()
		os.Remove(target)
		return "", err
	}
	return target, f.Close()
}

// stageUnits copies the systemd units with the packaged binaries' paths.
func stageUnits(from, to string) error {
	if err := os.MkdirAll(to, 0o755); err != nil {
		return err
	}
	units, err := filepath.Glob(filepath.Join(from, "tpmauthn-*.s*"))
	if err != nil {
		return err
	}
	for _, u := range units {
		b, err := os.ReadFile(u)
		if err != nil {
			return err
		}
		b = []byte(strings.ReplaceAll(string(b), "/usr/local/bin/", "/usr/bin/"))
		if err := os.WriteFile(filepath.Join(to, filepath.Base(u)), b, 0o644); err != nil {
			return err
		}
	}
	return nil
}

// gzipPages compresses the man pages in place (Debian installs them
// compressed).
func gzipPages(dir string) error {
	pages, err := filepath.Glob(filepath.Join(dir, "*.1"))
	if err != nil || len(pages) == 0 {
		return fmt.Errorf("no man pages in %s (%v)", dir, err)
	}
	for _, p := range pages {
		if err := gzipFile(p, p+".gz"); err != nil {
			return err
		}
		if err := os.Remove(p); err != nil {
			return err
		}
	}
	return nil
}

func gzipFile(from, to string) error {
	in, err := os.Open(from)
	if err != nil {
		return err
	}
	defer in.Close()
	f, err := os.Create(to)
	if err != nil {
		return err
	}
	zw, err := gzip.NewWriterLevel(f, gzip.BestCompression)
	if err != nil {
		f.Close()
		return err
	}
	// No name or time in the header: the packages are reproducible.
	if _, err := io.Copy(zw, in); err != nil {
		f.Close()
		return err
	}
	if err := zw.Close(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
