package broker

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/keybroker/keybroker/accesskey"
	"github.com/keybroker/keybroker/identity"
	"github.com/keybroker/keybroker/internal/sigv4"
	"github.com/keybroker/keybroker/managed"
)

// TestAccessKeys: an access key is made with a secret handed out once,
// whose SigV4 signing key the service gives a verifier with the principal
// it acts as; it is listed; a principal holds at most two at once; a
// revoked or unknown key verifies nothing (answered as unknown); an edge
// cannot be given one; and a root declared for backend-mode MACs is not
// used to derive secrets.
func TestAccessKeys(t *testing.T) {
	e := newEnv(t)
	ctx := t.Context()
	app := identity.Identity{TrustDomain: "kb.example", Kind: identity.Client, Name: "app"}
	r, secret, err := e.svc.CreateAccessKey(ctx, app, nil, "spiffe://kb.example/admin/ops")
	if err != nil {
		t.Fatal(err)
	}
	if len(secret) != accesskey.SecretSize || !accesskey.ValidID(r.ID) || r.State != accesskey.Active {
		t.Fatalf("made %+v with secret of %d characters", r, len(secret))
	}
	key, who, err := e.svc.SigningKey(ctx, r.ID, "20261207", "eu-west-1", "kms")
	if err != nil || who != app {
		t.Fatalf("SigningKey: %v, %v", who, err)
	}
	if want := sigv4.DeriveSigningKey([]byte(secret), "20261207", "eu-west-1", "kms"); !bytes.Equal(key, want) {
		t.Error("the signing key is not the one the handed-out secret derives")
	}
	if other, _, _ := e.svc.SigningKey(ctx, r.ID, "20261208", "eu-west-1", "kms"); bytes.Equal(other, key) {
		t.Error("the signing key does not change with the date")
	}
	stored, err := e.svc.reg.Store().Get(ctx, KindAccessKeys, r.ID)
	if err != nil || bytes.Contains(stored.Value, []byte(secret)) {
		t.Fatalf("the stored record holds the secret (or is missing: %v)", err)
	}
	second, _, err := e.svc.CreateAccessKey(ctx, app, nil, "spiffe://kb.example/admin/ops")
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := e.svc.CreateAccessKey(ctx, app, nil, "spiffe://kb.example/admin/ops"); !errors.Is(err, managed.ErrFailedPrecondition) {
		t.Errorf("a third active key: %v, want FailedPrecondition", err)
	}
	list, err := e.svc.AccessKeys(ctx)
	if err != nil || len(list) != 2 || list[0].ID > list[1].ID {
		t.Fatalf("AccessKeys = %v, %v", list, err)
	}
	revoked, err := e.svc.RevokeAccessKey(ctx, r.ID, "spiffe://kb.example/admin/ops")
	if err != nil || revoked.State != accesskey.Revoked || revoked.RevokedBy == "" {
		t.Fatalf("RevokeAccessKey: %+v, %v", revoked, err)
	}
	for name, id := range map[string]string{"revoked": r.ID, "unknown": "KBAKAAAAAAAAAAAAAAAA", "malformed": "AKIA-not-ours"} {
		if _, _, err := e.svc.SigningKey(ctx, id, "20261207", "eu-west-1", "kms"); !errors.Is(err, sigv4.ErrUnknownKey) {
			t.Errorf("%s key: %v, want ErrUnknownKey", name, err)
		}
	}
	if _, _, err := e.svc.SigningKey(ctx, second.ID, "20261207", "eu-west-1", "kms"); err != nil {
		t.Errorf("the other key after the revocation: %v", err)
	}
	if _, _, err := e.svc.CreateAccessKey(ctx, app, nil, "x"); err != nil {
		t.Errorf("a new key once one is revoked: %v", err)
	}
	if _, err := e.svc.RevokeAccessKey(ctx, "KBAKAAAAAAAAAAAAAAAA", "x"); !errors.Is(err, managed.ErrNotFound) {
		t.Errorf("revoking an unknown key: %v", err)
	}
	edge := identity.Identity{TrustDomain: "kb.example", Kind: identity.Edge, Name: "e1"}
	if _, _, err := e.svc.CreateAccessKey(ctx, edge, nil, "x"); !errors.Is(err, managed.ErrInvalidArgument) {
		t.Errorf("an access key for an edge: %v, want InvalidArgument", err)
	}
	e.svc.defaults[managed.ModeDerive] = "softkms:mac-root"
	if _, _, err := e.svc.CreateAccessKey(ctx, identity.Identity{TrustDomain: "kb.example", Kind: identity.Client, Name: "other"}, nil, "x"); err == nil || !strings.Contains(err.Error(), "mac-root") {
		t.Errorf("secrets derived with a root declared for backend-mode MACs: %v", err)
	}
}
