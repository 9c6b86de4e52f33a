package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestKMSPluginUsage checks that kms-plugin refuses bad settings with
// exit 2 and a message naming what is wrong, before it dials or listens.
func TestKMSPluginUsage(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	yamlFile := func(body string) string {
		p := filepath.Join(dir, strings.ReplaceAll(t.Name(), "/", "_")+".yaml")
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	unknown := yamlFile("listen: /tmp/x.sock\nkeyy: k8s\n")
	tls := []string{"--ca", "ca.crt", "--cert", "c.crt", "--tls-key", "c.key"}
	tests := []struct {
		name string
		args []string
		say  string
	}{
		{"nothing", nil, "listen (--listen) is required"},
		{"relative socket", append([]string{"--listen", "kms.sock", "--key", "k", "--addr", "a:1"}, tls...), "must be absolute"},
		{"no key", append([]string{"--listen", "/run/k.sock", "--addr", "a:1"}, tls...), "key (--key) is required"},
		{"bad addr", append([]string{"--listen", "/run/k.sock", "--key", "k", "--addr", "nohost"}, tls...), `addr "nohost"`},
		{"no identity", []string{"--listen", "/run/k.sock", "--key", "k", "--addr", "a:1"}, "client identity needs"},
		{"both identities", append([]string{"--listen", "/run/k.sock", "--key", "k", "--addr", "a:1", "--spiffe-socket", "unix:///x"}, tls...), "both given"},
		{"unknown yaml field", []string{"--config", unknown}, "keyy"},
		{"bad key id", append([]string{"--listen", "/run/k.sock", "--key", "not a key", "--addr", "a:1"}, tls...), "is not a keybroker key id"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stderr bytes.Buffer
			code := run(t.Context(), append([]string{"kms-plugin"}, tt.args...), func(string) string { return "" }, nil, &bytes.Buffer{}, &stderr)
			if code != 2 || !strings.Contains(stderr.String(), tt.say) {
				t.Errorf("kms-plugin %q: exit %d, stderr %q; want 2 saying %q", tt.args, code, stderr.String(), tt.say)
			}
		})
	}
}
