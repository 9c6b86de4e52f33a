package e2e

// Forwarding bound to the caller, across real processes: a real central
// and a real edge over mutual TLS; an attacker holding the edge's
// certificate calls EdgeSync.Forward itself.

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/audit"
	"github.com/keybroker/keybroker/client"
	"github.com/keybroker/keybroker/identity"
	"github.com/keybroker/keybroker/tests/framework"
)

// TestForwardBoundToCallerEndToEnd: an edge certificate cannot make the
// central tier act as an admin or client it names; the SDK, the CLI and
// admin calls through a real edge still work, as their own principals.
func TestForwardBoundToCallerEndToEnd(t *testing.T) {
	c := framework.NewProcesses(t, &framework.EdgeNode{Name: "edge-eu-1", Region: "eu", Prefetch: true, Staleness: time.Hour})
	ctx := t.Context()
	owner := map[string]string{"owner": framework.TrustDomain}
	aes := kbv1.KeyType_KEY_TYPE_AES_256_GCM
	var rev uint64
	for _, k := range []*kbv1.CreateKeyRequest{
		{KeyId: "hsm", Type: aes, Mode: kbv1.KeyMode_KEY_MODE_BACKEND, Labels: owner},
		{KeyId: "unplaced", Type: aes, Mode: kbv1.KeyMode_KEY_MODE_WRAP, Labels: owner},
		{KeyId: "crown-jewels", Type: aes, Mode: kbv1.KeyMode_KEY_MODE_WRAP},
	} {
		m, err := c.Admin.Admin.CreateKey(ctx, k)
		must(t, "CreateKey "+k.KeyId, err)
		rev = max(rev, m.GetRevision())
	}
	c.WaitApplied(t, rev)
	jewels, err := c.Admin.KB.Encrypt(ctx, &kbv1.EncryptRequest{KeyId: "crown-jewels", Plaintext: []byte("the secret")})
	must(t, "Encrypt crown-jewels", err)
	edge := c.Edges["edge-eu-1"]

	t.Run("a forged principal is refused", func(t *testing.T) {
		attacker := c.DialEdgeSync(t, "edge-eu-1")
		admin := "spiffe://" + framework.TrustDomain + "/admin/ops"
		dec, _ := proto.Marshal(&kbv1.DecryptRequest{Ciphertext: jewels.GetCiphertext()})
		create, _ := proto.Marshal(&kbv1.CreateKeyRequest{KeyId: "planted", Type: aes, Mode: kbv1.KeyMode_KEY_MODE_WRAP})
		for _, f := range []*kbv1.ForwardRequest{
			{Method: "/keybroker.v1.KeyBroker/Decrypt", Request: dec, Principal: admin},
			{Method: "/keybroker.v1.KeyAdmin/CreateKey", Request: create, Principal: admin},
			{Method: "/keybroker.v1.KeyAdmin/ScheduleKeyDeletion", Request: create, Principal: admin, Proof: []byte("trust me")},
		} {
			resp, err := attacker.Forward(ctx, f)
			if code(err) != codes.PermissionDenied {
				t.Errorf("Forward %s as %s = %v, %v; want PermissionDenied", f.Method, f.Principal, resp, err)
			}
		}
		if _, err := c.Admin.KB.DescribeKey(ctx, &kbv1.DescribeKeyRequest{KeyId: "planted"}); code(err) != codes.NotFound {
			t.Errorf("DescribeKey planted = %v, want NotFound: the forged CreateKey must not have run", err)
		}
		for _, l := range c.AuditRecords(t, func(audit.Record) bool { return true }) {
			if l.Via != "" && l.Principal == admin {
				t.Errorf("a call ran as the forged admin: %+v", l)
			}
			if l.Operation == "Forward" && l.Decision == "deny" && l.Principal != "spiffe://"+framework.TrustDomain+"/edge/edge-eu-1" {
				t.Errorf("a refused forward names %s as its actor", l.Principal)
			}
		}
	})

	t.Run("the SDK through the edge", func(t *testing.T) {
		files, err := c.CA.IssueFiles(identity.Identity{TrustDomain: framework.TrustDomain, Kind: identity.Client, Name: "app"}, nil, time.Hour, c.Dir, "sdk-app", c.CAFile)
		must(t, "client certificate", err)
		cl, err := client.New(ctx, client.Config{Addrs: []string{edge.Proc.Addr}, CAFile: files.CA, CertFile: files.Cert, KeyFile: files.Key, Region: "eu"})
		must(t, "client.New", err)
		t.Cleanup(func() { cl.Close() })
		for _, key := range []string{"hsm", "unplaced"} {
			ct, err := cl.Encrypt(ctx, key, []byte("via "+key), nil)
			must(t, "SDK Encrypt "+key, err)
			pt, err := cl.Decrypt(ctx, ct.Ciphertext, nil)
			if err != nil || !bytes.Equal(pt.Plaintext, []byte("via "+key)) {
				t.Errorf("SDK Decrypt %s = %v, %v", key, pt, err)
			}
		}
		if calls := cl.Calls(); calls[edge.Proc.Addr] == 0 {
			t.Errorf("the SDK made no calls to the edge: %v", calls)
		}
		var viaEdge int
		for _, l := range c.AuditRecords(t, func(audit.Record) bool { return true }) {
			if l.Via == "edge-eu-1" && l.Principal == "spiffe://"+framework.TrustDomain+"/client/app" && l.Outcome == "ok" && (l.Key == "hsm" || l.Key == "unplaced") {
				viaEdge++
			}
		}
		if viaEdge < 4 {
			t.Errorf("central audited %d forwarded calls as the app, want 4", viaEdge)
		}
		// Admin calls through the edge, with the SDK's Admin client.
		adminFiles, err := c.CA.IssueFiles(identity.Identity{TrustDomain: framework.TrustDomain, Kind: identity.Admin, Name: "ops"}, nil, time.Hour, c.Dir, "sdk-ops", c.CAFile)
		must(t, "admin certificate", err)
		acl, err := client.New(ctx, client.Config{Addrs: []string{edge.Proc.Addr}, CAFile: adminFiles.CA, CertFile: adminFiles.Cert, KeyFile: adminFiles.Key})
		must(t, "client.New (admin)", err)
		t.Cleanup(func() { acl.Close() })
		adm, err := acl.Admin()
		must(t, "Admin", err)
		for _, id := range []string{"via-edge-1", "via-edge-2"} {
			if _, err := adm.CreateKey(ctx, &kbv1.CreateKeyRequest{KeyId: id, Type: aes, Mode: kbv1.KeyMode_KEY_MODE_DERIVE, Labels: owner}); err != nil {
				t.Errorf("CreateKey %s through the edge: %v", id, err)
			}
		}
	})

	t.Run("the CLI through the edge", func(t *testing.T) {
		if out, code := c.CLIAs(t, edge.Proc.Addr, identity.Admin, "ops", nil, "key", "create", "cli-key", "--type", "aes-256-gcm", "--mode", "wrap", "--label", "owner="+framework.TrustDomain); code != 0 {
			t.Fatalf("key create through the edge: exit %d: %s", code, out)
		}
		ct, code := c.CLIAs(t, edge.Proc.Addr, identity.Client, "app", []byte("card 4111"), "encrypt", "--key", "hsm")
		if code != 0 {
			t.Fatalf("encrypt hsm through the edge: exit %d: %s", code, ct)
		}
		pt, code := c.CLIAs(t, edge.Proc.Addr, identity.Client, "app", []byte(ct), "decrypt")
		if code != 0 || strings.TrimSpace(pt) != "card 4111" {
			t.Errorf("decrypt through the edge = %q, exit %d", pt, code)
		}
		if out, code := c.CLIAs(t, edge.Proc.Addr, identity.Admin, "ops", nil, "nodes"); code != 0 || !strings.Contains(out, "edge-eu-1") {
			t.Errorf("nodes through the edge: exit %d: %s", code, out)
		}
	})
}
