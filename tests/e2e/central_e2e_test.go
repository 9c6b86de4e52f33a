package e2e

// The process test of the central tier alone: a real `keybroker central`
// (built once by TestMain), real certificates, a softkms keystore, real gRPC
// over mutual TLS; restarted with its state on disk.

import (
	"strings"
	"testing"

	"github.com/keybroker/keybroker/identity"
	"github.com/keybroker/keybroker/tests/framework"
)

// TestMain builds the keybroker binary once for every test here.
func TestMain(m *testing.M) { framework.Main(m) }

func TestCentralProcessEndToEnd(t *testing.T) {
	c := framework.NewSetup(t)
	p := c.StartCentral(t)

	out, code := c.CLIAs(t, p.Addr, identity.Admin, "ops", nil, "key", "create", "payments", "--type", "aes-256-gcm", "--mode", "derive", "--label", "owner=kb.test")
	if code != 0 {
		t.Fatalf("key create: exit %d: %s", code, out)
	}
	ct, code := c.CLIAs(t, p.Addr, identity.Client, "billing", []byte("card 4111"), "encrypt", "--key", "payments", "--context", "order=7")
	if code != 0 {
		t.Fatalf("encrypt: exit %d: %s", code, ct)
	}
	pt, code := c.CLIAs(t, p.Addr, identity.Client, "billing", []byte(ct), "decrypt", "--context", "order=7")
	if code != 0 || pt != "card 4111" {
		t.Fatalf("decrypt = %q, exit %d", pt, code)
	}
	if out, code := c.CLIAs(t, p.Addr, identity.Client, "billing", []byte(ct), "decrypt", "--context", "order=8"); code != 6 {
		t.Errorf("decrypt with the wrong context: exit %d (%s), want 6", code, out)
	}
	if out, code := c.CLIAs(t, p.Addr, identity.Client, "billing", nil, "key", "rotate", "payments"); code != 3 {
		t.Errorf("client rotates: exit %d (%s), want 3 (denied)", code, out)
	}

	// Restart: every key, version and ciphertext survives.
	p.Stop(t)
	p = c.StartCentral(t)
	if out, code := c.CLIAs(t, p.Addr, identity.Admin, "ops", nil, "key", "rotate", "payments"); code != 0 {
		t.Fatalf("rotate after restart: exit %d: %s", code, out)
	}
	pt, code = c.CLIAs(t, p.Addr, identity.Client, "billing", []byte(ct), "decrypt", "--context", "order=7")
	if code != 0 || pt != "card 4111" {
		t.Errorf("decrypt after restart and rotation = %q, exit %d", pt, code)
	}
	p.Stop(t)
	if out, code := c.CLIAs(t, "", identity.Admin, "ops", nil, "audit", "verify", c.AuditLog); code != 0 || !strings.Contains(out, "verified") {
		t.Errorf("audit verify: exit %d: %s", code, out)
	}
}
