package server

import (
	"crypto/hmac"
	"testing"

	"google.golang.org/grpc/codes"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/identity"
)

// teamPolicy lets the billing team's admin manage app=billing keys and its
// client use them. rootsConfined adds what confines the team to its roots.
const teamPolicy = `
@id("ops")
permit (principal == Admin::"ops", action, resource);

@id("billing-admin")
permit (principal == Admin::"billing", action, resource is Key)
when { resource.hasTag("app") && resource.getTag("app") == "billing" };

@id("billing-app")
permit (principal == Client::"billing", action, resource is Key)
when { resource.hasTag("app") && resource.getTag("app") == "billing" };
`

const rootsConfined = teamPolicy + `
@id("billing-roots")
forbid (principal == Admin::"billing", action == Action::"CreateKey", resource is Key)
unless { resource.root == "softkms:billing-prf" || resource.root == "softkms:mac" };

@id("shared-prf-not-for-billing")
forbid (principal == Client::"billing", action, resource is Key)
when { resource.root == "softkms:prf" };
`

var (
	hmacType    = kbv1.KeyType_KEY_TYPE_HMAC_SHA256
	aesType     = kbv1.KeyType_KEY_TYPE_AES_256_GCM
	deriveMode  = kbv1.KeyMode_KEY_MODE_DERIVE
	backendMode = kbv1.KeyMode_KEY_MODE_BACKEND
	billing     = map[string]string{"app": "billing"}
)

// TestTeamAdminCannotBorrowTheDeriveRoot is finding 2 of issue 13 over
// gRPC: the billing team's admin, allowed only on app=billing keys,
// creates a backend-mode hmac-sha256 key on the derive root and has its
// client MAC another team's derive input, which was that key's material.
// CreateKey now refuses the root outside its role.
func TestTeamAdminCannotBorrowTheDeriveRoot(t *testing.T) {
	e := startWith(t, teamPolicy)
	ctx := t.Context()
	ops := kbv1.NewKeyAdminClient(e.conn(t, identity.Admin, "ops"))
	teamAdmin := kbv1.NewKeyAdminClient(e.conn(t, identity.Admin, "billing"))
	teamApp := kbv1.NewKeyBrokerClient(e.conn(t, identity.Client, "billing"))
	if _, err := ops.CreateKey(ctx, &kbv1.CreateKeyRequest{KeyId: "payments-mac", Type: hmacType, Mode: deriveMode, Labels: map[string]string{"app": "payments"}}); err != nil {
		t.Fatal(err)
	}
	victim, err := e.svc.Registry().Get(ctx, "payments-mac")
	if err != nil {
		t.Fatal(err)
	}
	material, err := e.soft.MAC(ctx, "prf", broker.DeriveInput(victim, 1))
	if err != nil {
		t.Fatal(err)
	}

	for _, root := range []string{"softkms:prf", "softkms:prf;" + e.softURI} {
		_, err = teamAdmin.CreateKey(ctx, &kbv1.CreateKeyRequest{KeyId: "evil", Type: hmacType, Mode: backendMode, RootKey: root, Labels: billing})
		code(t, "backend hmac on the derive root "+root, err, codes.InvalidArgument)
	}
	// The refusal is audited, naming the team admin and the key.
	e.audit.Sync()
	var audited int
	for _, r := range auditLines(t, e.auditPath) {
		if r.Operation == "CreateKey" && r.Key == "evil" && r.Principal == "spiffe://kb.test/admin/billing" && r.Outcome == "InvalidArgument" {
			audited++
		}
	}
	if audited != 2 {
		t.Errorf("%d audit lines for the refused CreateKeys, want 2", audited)
	}
	// Had the key been made, this would be the victim's material.
	tag, err := teamApp.GenerateMac(ctx, &kbv1.GenerateMacRequest{KeyId: "evil", Message: broker.DeriveInput(victim, 1)})
	if err == nil && hmac.Equal(tag.GetMac(), material.Reveal()) {
		t.Fatal("the billing client computed the payments key's material")
	}
	code(t, "GenerateMac on the refused key", err, codes.PermissionDenied) // unknown keys look like any unlabelled key

	// On a backend root, the MAC input is domain-separated: no message
	// gives a derive input's MAC, whatever the root.
	if _, err := teamAdmin.CreateKey(ctx, &kbv1.CreateKeyRequest{KeyId: "team-mac", Type: hmacType, Mode: backendMode, RootKey: "softkms:mac", Labels: billing}); err != nil {
		t.Fatal(err)
	}
	teamKey, _ := e.svc.Registry().Get(ctx, "team-mac")
	msg := broker.DeriveInput(victim, 1)
	tag, err = teamApp.GenerateMac(ctx, &kbv1.GenerateMacRequest{KeyId: "team-mac", Message: msg})
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := e.soft.MAC(ctx, "mac", msg)
	want, _ := e.soft.MAC(ctx, "mac", teamKey.BackendMACInput(1, msg))
	if hmac.Equal(tag.GetMac(), raw.Reveal()) || !hmac.Equal(tag.GetMac(), want.Reveal()) {
		t.Errorf("backend-mode MAC = %x: not the root's HMAC of the domain-separated input", tag.GetMac())
	}
}

// TestPolicyConfinesTeamToItsRoots: resource.root in the CreateKey
// decision is the root the key will use — the mode's default when the
// request names none, spelled as declared whatever spelling the request
// uses — and in every other decision the key's primary root.
func TestPolicyConfinesTeamToItsRoots(t *testing.T) {
	e := startWith(t, rootsConfined)
	ctx := t.Context()
	teamAdmin := kbv1.NewKeyAdminClient(e.conn(t, identity.Admin, "billing"))
	ops := kbv1.NewKeyAdminClient(e.conn(t, identity.Admin, "ops"))
	teamApp := kbv1.NewKeyBrokerClient(e.conn(t, identity.Client, "billing"))

	for _, tc := range []struct {
		name string
		req  *kbv1.CreateKeyRequest
		want codes.Code
	}{
		{"the default derive root", &kbv1.CreateKeyRequest{KeyId: "b1", Type: aesType, Mode: deriveMode, Labels: billing}, codes.PermissionDenied},
		{"the shared derive root", &kbv1.CreateKeyRequest{KeyId: "b2", Type: aesType, Mode: deriveMode, RootKey: "softkms:prf", Labels: billing}, codes.PermissionDenied},
		{"the team's derive root", &kbv1.CreateKeyRequest{KeyId: "b3", Type: aesType, Mode: deriveMode, RootKey: "softkms:billing-prf", Labels: billing}, codes.OK},
		{"the team's root, spelled in full", &kbv1.CreateKeyRequest{KeyId: "b4", Type: aesType, Mode: deriveMode, RootKey: "softkms:billing-prf;" + e.softURI, Labels: billing}, codes.OK},
		{"the team's backend root", &kbv1.CreateKeyRequest{KeyId: "b5", Type: hmacType, Mode: backendMode, RootKey: "softkms:mac", Labels: billing}, codes.OK},
		{"an undeclared root", &kbv1.CreateKeyRequest{KeyId: "b6", Type: aesType, Mode: deriveMode, RootKey: "softkms:nope", Labels: billing}, codes.PermissionDenied},
	} {
		_, err := teamAdmin.CreateKey(ctx, tc.req)
		code(t, tc.name, err, tc.want)
	}
	k, err := e.svc.Registry().Get(ctx, "b4")
	if err != nil || k.PrimaryVersion().RootKey != "softkms:billing-prf" {
		t.Errorf("b4's root = %q (%v), want the declared spelling softkms:billing-prf", k.PrimaryVersion().RootKey, err)
	}
	if _, err := ops.CreateKey(ctx, &kbv1.CreateKeyRequest{KeyId: "on-shared", Type: aesType, Mode: deriveMode, Labels: billing}); err != nil {
		t.Fatal(err)
	}
	_, err = teamApp.Encrypt(ctx, &kbv1.EncryptRequest{KeyId: "b3", Plaintext: []byte("x")})
	code(t, "Encrypt with a key on the team's root", err, codes.OK)
	_, err = teamApp.Encrypt(ctx, &kbv1.EncryptRequest{KeyId: "on-shared", Plaintext: []byte("x")})
	code(t, "Encrypt with a key on the shared root", err, codes.PermissionDenied)
}
