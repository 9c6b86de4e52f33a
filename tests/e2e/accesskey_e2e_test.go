package e2e

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/keybroker/keybroker/accesskey"
	"github.com/keybroker/keybroker/identity"
	"github.com/keybroker/keybroker/tests/framework"
)

// TestAccessKeyCLI: an operator makes an access key with the CLI against
// a real central process (its secret printed once, as env lines), lists
// it without the secret, and revokes it; a client cannot make one.
func TestAccessKeyCLI(t *testing.T) {
	c := framework.NewProcessesOn(t, framework.SoftkmsRoots, framework.BasicRoots, "")
	addr := c.Central.Addr
	out, stderr, code := c.CLIOut(t, addr, identity.Admin, "ops", "access-key", "create", "--principal", "client/app", "--env")
	if code != 0 {
		t.Fatalf("access-key create: exit %d: %s", code, stderr)
	}
	var id, secret string
	for line := range strings.Lines(out) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "AWS_ACCESS_KEY_ID="); ok {
			id = v
		}
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "AWS_SECRET_ACCESS_KEY="); ok {
			secret = v
		}
	}
	if !accesskey.ValidID(id) || len(secret) != accesskey.SecretSize {
		t.Fatalf("access-key create --env printed %q", out)
	}
	out, stderr, code = c.CLIOut(t, addr, identity.Admin, "ops", "access-key", "list", "--output", "json")
	if code != 0 || strings.Contains(out, secret) {
		t.Fatalf("access-key list: exit %d, %s; the secret is listed: %v", code, stderr, strings.Contains(out, secret))
	}
	var listed struct {
		ID        string `json:"access_key_id"`
		Principal string `json:"principal"`
		State     string `json:"state"`
	}
	if err := json.Unmarshal([]byte(out), &listed); err != nil || listed.ID != id || listed.State != "active" ||
		listed.Principal != "spiffe://"+framework.TrustDomain+"/client/app" {
		t.Fatalf("access-key list = %q (%v)", out, err)
	}
	if _, _, code := c.CLIOut(t, addr, identity.Admin, "ops", "access-key", "revoke", id); code != 0 {
		t.Fatalf("access-key revoke: exit %d", code)
	}
	out, _, _ = c.CLIOut(t, addr, identity.Admin, "ops", "access-key", "list", "--output", "json")
	if !strings.Contains(out, `"state":"revoked"`) {
		t.Errorf("after revoke, list = %s", out)
	}
	if _, stderr, code := c.CLIOut(t, addr, identity.Client, "app", "access-key", "create", "--principal", "admin/ops"); code == 0 || !strings.Contains(strings.ToLower(stderr), "denied") {
		t.Errorf("a client making an access key for admin/ops: exit %d, %s", code, stderr)
	}
}
