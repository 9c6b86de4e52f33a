package identity_test

import (
	"crypto/x509"
	"encoding/pem"
	"path/filepath"
	"testing"
	"time"

	"github.com/keybroker/keybroker/backends"
	"github.com/keybroker/keybroker/backends/pkcs11"
	"github.com/keybroker/keybroker/identity"
	"github.com/keybroker/keybroker/internal/softhsm/softhsmtest"
)

// TestPKCS11CA: a CA whose key is a non-extractable ECDSA P-256 key on a
// real SoftHSM2 token self-signs its certificate and issues leaves that
// verify against it; reloaded from its certificate file with the token
// key, it issues again; a token key that is not the certificate's is
// refused.
func TestPKCS11CA(t *testing.T) {
	tok := softhsmtest.New(t)
	ctx := t.Context()
	b, err := pkcs11.Open(ctx, tok.URI(""), backends.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	for _, name := range []string{"keybroker-ca", "other-ca"} {
		if _, err := b.(backends.KeyCreator).CreateKey(ctx, name, backends.ECDSAP256); err != nil {
			t.Fatalf("CreateKey %s: %v", name, err)
		}
	}
	signer, err := identity.NewBackendSigner(ctx, b.(backends.Signer), "keybroker-ca")
	if err != nil {
		t.Fatal(err)
	}
	ca, err := identity.NewSignerCA("kb.test", signer, identity.CAValidity)
	if err != nil {
		t.Fatalf("NewSignerCA: %v", err)
	}
	if err := ca.Cert.CheckSignatureFrom(ca.Cert); err != nil {
		t.Errorf("the CA certificate is not self-signed by the token key: %v", err)
	}
	dir := t.TempDir()
	caFile := filepath.Join(dir, "ca.crt")
	if err := ca.WriteCA(caFile, filepath.Join(dir, "ca.key")); err == nil {
		t.Error("WriteCA wrote a key file for a key that lives in the token")
	}
	if err := ca.WriteCert(caFile); err != nil {
		t.Fatal(err)
	}

	loaded, err := identity.LoadSignerCA(caFile, signer)
	if err != nil {
		t.Fatalf("LoadSignerCA: %v", err)
	}
	certPEM, _, err := loaded.Issue(identity.Identity{TrustDomain: "kb.test", Kind: identity.Edge, Name: "edge-eu-1"}, []string{"127.0.0.1"}, 0)
	if err != nil {
		t.Fatalf("Issue through the token: %v", err)
	}
	blk, _ := pem.Decode(certPEM)
	leaf, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if f := identity.CheckChain(leaf, nil, []*x509.Certificate{ca.Cert}, time.Now()); f != nil {
		t.Errorf("the leaf issued through the token does not verify against ca.crt: %v", f)
	}

	wrong, err := identity.NewBackendSigner(ctx, b.(backends.Signer), "other-ca")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := identity.LoadSignerCA(caFile, wrong); err == nil {
		t.Error("LoadSignerCA accepted a token key that is not the CA's")
	}
	if _, err := identity.NewBackendSigner(ctx, b.(backends.Signer), "absent"); err == nil {
		t.Error("NewBackendSigner accepted a key the token does not have")
	}
}
