package server

import (
	"bytes"
	"encoding/json"
	"os"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/identity"
	"github.com/keybroker/keybroker/policy"
)

// TestAccessKeyAdmin: an admin makes an access key for client/app and gets
// its secret once; the list and the revocation never carry it, nor does any
// audit line; a client, and a team admin the policy gives keys only, are
// refused; bad principals are InvalidArgument.
func TestAccessKeyAdmin(t *testing.T) {
	e := start(t)
	ctx := t.Context()
	ops := kbv1.NewKeyAdminClient(e.conn(t, identity.Admin, "ops"))
	made, err := ops.CreateAccessKey(ctx, &kbv1.CreateAccessKeyRequest{Principal: "client/app"})
	if err != nil {
		t.Fatal(err)
	}
	if made.GetSecretAccessKey() == "" || made.GetPrincipal() != "spiffe://"+e.srv.td+"/client/app" || made.GetState() != "active" ||
		made.GetCreatedBy() != "spiffe://"+e.srv.td+"/admin/ops" {
		t.Fatalf("CreateAccessKey = %v", made)
	}
	list, err := ops.ListAccessKeys(ctx, &kbv1.ListAccessKeysRequest{})
	if err != nil || len(list.GetAccessKeys()) != 1 || list.GetAccessKeys()[0].GetSecretAccessKey() != "" {
		t.Fatalf("ListAccessKeys = %v, %v", list, err)
	}
	revoked, err := ops.RevokeAccessKey(ctx, &kbv1.AccessKeyRequest{AccessKeyId: made.GetAccessKeyId()})
	if err != nil || revoked.GetState() != "revoked" || revoked.GetSecretAccessKey() != "" {
		t.Fatalf("RevokeAccessKey = %v, %v", revoked, err)
	}
	for name, kind := range map[string]identity.Kind{"billing": identity.Client, "team-a": identity.Admin} {
		a := kbv1.NewKeyAdminClient(e.conn(t, kind, name))
		if _, err := a.CreateAccessKey(ctx, &kbv1.CreateAccessKeyRequest{Principal: "admin/ops"}); status.Code(err) != codes.PermissionDenied {
			t.Errorf("%s %s makes an access key for admin/ops: %v, want PermissionDenied", kind, name, err)
		}
	}
	for _, p := range []string{"edge/e1", "central/c", "spiffe://other.example/client/app", "client/", "", "client/a b"} {
		if _, err := ops.CreateAccessKey(ctx, &kbv1.CreateAccessKeyRequest{Principal: p}); status.Code(err) != codes.InvalidArgument {
			t.Errorf("principal %q: %v, want InvalidArgument", p, err)
		}
	}
	if _, err := ops.RevokeAccessKey(ctx, &kbv1.AccessKeyRequest{AccessKeyId: "KBAKAAAAAAAAAAAAAAAA"}); status.Code(err) != codes.NotFound {
		t.Errorf("revoking an unknown key: %v", err)
	}
	e.audit.Sync()
	raw, err := os.ReadFile(e.auditPath)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(raw, []byte(made.GetSecretAccessKey())) {
		t.Error("an audit line holds the secret access key")
	}
	var created bool
	for _, r := range auditLines(t, e.auditPath) {
		if string(r.Operation) == string(policy.CreateAccessKey) && r.Outcome == "ok" {
			created = true
			if b, _ := json.Marshal(r); !bytes.Contains(b, []byte(made.GetAccessKeyId())) {
				t.Errorf("the audit line of the creation does not name the key: %s", b)
			}
		}
	}
	if !created {
		t.Error("no audit line for CreateAccessKey")
	}
}
