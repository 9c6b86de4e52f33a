package main

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keybroker/keybroker/internal/etcdproc"
)

// TestDevUsage: bad flags exit 2 before anything starts; the help says
// how --backend and the ports work.
func TestDevUsage(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "dev")
	tests := []struct {
		args   []string
		stderr string
	}{
		{[]string{"--port", "-1"}, "--port -1: give 0 (system-chosen ports) or 1..65523"},
		{[]string{"--port", "65530"}, "--port 65530"},
		{[]string{"--backend", "pkcs11:token=kb;object=root-1?module-path=/m.so&pin-source=/p"}, "--backend names a key (root-1)"},
		{[]string{"--backend", "vault:x"}, `unknown scheme "vault"`},
		{[]string{"--softhsm", "--backend", "softkms:path=/k.json;kek-source=/kek"}, "--softhsm and --backend both name the root of trust"},
		{[]string{"--log-level", "loud"}, `"loud" is not one of debug, info, warn, error`},
		{[]string{"--log-format", "xml"}, `"xml" is not one of text, json`},
		{[]string{"extra"}, `unexpected argument "extra"`},
		{[]string{"--centrals", "0"}, "--centrals 0: give 1..8"},
		{[]string{"--centrals", "9"}, "--centrals 9: give 1..8"},
		{[]string{"--centrals", "3", "--port", "65522"}, "--port 65522: give 0 (system-chosen ports) or 1..65521"},
		{[]string{"--etcd", "https://127.0.0.1:2379"}, "give a URL http://host:port"},
		{[]string{"--etcd", "http://10.1.2.3:2379"}, "not a loopback address"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			r := runCLI(t, nil, nil, append([]string{"dev", "--data", dir}, tt.args...)...)
			wantCode(t, r, exitUsage)
			if !strings.Contains(r.stderr, tt.stderr) {
				t.Errorf("stderr %q does not contain %q", r.stderr, tt.stderr)
			}
		})
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a refused command made the data directory (%v)", err)
	}
	r := runCLI(t, nil, nil, "dev", "--help")
	wantCode(t, r, 0)
	for _, want := range []string{"pkcs11:token=LABEL?module-path=", "awskms:region=", "gcpkms:projects/", "softkms:path=",
		"edge-us   gRPC N+1   ops N+11", "--port 0", "env file stay", "source keybroker-dev/env",
		"--centrals N", "apt install etcd-server", "central-2 takes gRPC port\nN+3"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("dev --help lacks %q", want)
		}
	}
}

// TestDevCentralsWithoutEtcd: --centrals 3 with no etcd binary fails at
// once, saying what to install, and touches nothing.
func TestDevCentralsWithoutEtcd(t *testing.T) {
	t.Setenv(etcdproc.BinaryEnv, filepath.Join(t.TempDir(), "no-etcd"))
	dir := filepath.Join(t.TempDir(), "dev")
	r := runCLI(t, nil, nil, "dev", "--data", dir, "--port", "0", "--centrals", "3")
	if r.code == 0 || !strings.Contains(r.stderr, "--centrals 3: the central nodes share an etcd store") || !strings.Contains(r.stderr, "--etcd") {
		t.Errorf("dev --centrals 3 without etcd: exit %d, stderr %q; want a failure saying what to install", r.code, r.stderr)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the failed start made the data directory (%v)", err)
	}
}

// TestDevShellQuote: what shellQuote and shellWord make, a POSIX shell
// reads back as the same single word.
func TestDevShellQuote(t *testing.T) {
	t.Parallel()
	for _, s := range []string{"plain", "/a b/c", "it's", `"$HOME" $(id) ` + "`id`", `back\slash`, "new\nline", "''", ""} {
		for name, quote := range map[string]func(string) string{"shellQuote": shellQuote, "shellWord": shellWord} {
			out, err := exec.CommandContext(t.Context(), "sh", "-c", `printf '%s' `+quote(s)).Output()
			if err != nil || string(out) != s {
				t.Errorf("sh read %s(%q) = %s as %q (%v)", name, s, quote(s), out, err)
			}
		}
	}
}
