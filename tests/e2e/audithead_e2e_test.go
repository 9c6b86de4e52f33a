package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keybroker/keybroker/audit"
	"github.com/keybroker/keybroker/identity"
	"github.com/keybroker/keybroker/tests/framework"
)

// TestCentralAuditHead runs a central process with audit.head_key_file and
// attacks its log between runs: the last line dropped and a matching head
// written without the key, or the head removed. The process refuses to
// start on either, saying why, and `audit verify --head-key-file` agrees.
func TestCentralAuditHead(t *testing.T) {
	c := framework.NewSetup(t)
	key := filepath.Join(c.Dir, "audit-head.key")
	if err := os.WriteFile(key, bytes.Repeat([]byte{7}, 32), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := os.ReadFile(c.Config)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(c.Config, append(cfg, "audit: {head_key_file: audit-head.key}\n"...), 0o600); err != nil {
		t.Fatal(err)
	}
	p := c.StartCentral(t)
	if out, code := c.CLIAs(t, p.Addr, identity.Admin, "ops", nil, "key", "create", "payments", "--type", "aes-256-gcm", "--mode", "derive"); code != 0 {
		t.Fatalf("key create: exit %d: %s", code, out)
	}
	if out, code := c.CLIAs(t, p.Addr, identity.Admin, "ops", nil, "key", "rotate", "payments"); code != 0 {
		t.Fatalf("key rotate: exit %d: %s", code, out)
	}
	p.Stop(t)
	verify := func() (string, int) {
		cmd := exec.CommandContext(t.Context(), framework.Binary(), "audit", "verify", "--head-key-file", key, c.AuditLog)
		cmd.Env = framework.ProcessEnv()
		out, _ := cmd.CombinedOutput()
		return string(out), cmd.ProcessState.ExitCode()
	}
	if out, code := verify(); code != 0 || !strings.Contains(out, "MAC checked") {
		t.Fatalf("audit verify of the untouched log: exit %d: %s", code, out)
	}
	good, err := os.ReadFile(c.AuditLog)
	if err != nil {
		t.Fatal(err)
	}
	goodHead, err := os.ReadFile(c.AuditLog + ".head")
	if err != nil {
		t.Fatal(err)
	}
	// start runs the central process expecting it to refuse to start.
	refuses := func(t *testing.T, want string) {
		t.Helper()
		cmd := exec.CommandContext(t.Context(), framework.Binary(), "central", "--config", c.Config)
		cmd.Env = framework.ProcessEnv()
		out, err := cmd.CombinedOutput()
		if err == nil || !strings.Contains(string(out), want) {
			t.Errorf("central started on a tampered log (%v), or did not say %q:\n%s", err, want, out)
		}
	}

	t.Run("last line dropped, head rewritten without the key", func(t *testing.T) {
		lines := bytes.SplitAfter(bytes.TrimSuffix(good, []byte("\n")), []byte("\n"))
		if len(lines) < 2 {
			t.Fatalf("the audit log has %d lines, want at least 2", len(lines))
		}
		cut := bytes.Join(lines[:len(lines)-1], nil)
		var last audit.Record
		if err := json.Unmarshal(lines[len(lines)-2], &last); err != nil {
			t.Fatal(err)
		}
		must(t, "cutting the log", os.WriteFile(c.AuditLog, cut, 0o600))
		must(t, "forging the head", os.WriteFile(c.AuditLog+".head", fmt.Appendf(nil, "%d %s\n", last.Seq, last.Hash), 0o600))
		refuses(t, "no MAC")
		if out, code := verify(); code != exitVerifyFailed {
			t.Errorf("audit verify of the cut log: exit %d: %s", code, out)
		}
	})
	t.Run("head removed", func(t *testing.T) {
		must(t, "restoring the log", os.WriteFile(c.AuditLog, good, 0o600))
		must(t, "removing the head", os.Remove(c.AuditLog+".head"))
		refuses(t, "no head file")
	})
	// Restored, it starts and continues the chain.
	must(t, "restoring the head", os.WriteFile(c.AuditLog+".head", goodHead, 0o600))
	c.StartCentral(t).Stop(t)
	if out, code := verify(); code != 0 {
		t.Errorf("audit verify after a clean restart: exit %d: %s", code, out)
	}
}
