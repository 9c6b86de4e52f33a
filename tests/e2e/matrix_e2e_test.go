package e2e

import (
	"fmt"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/testing/protocmp"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/identity"
	"github.com/keybroker/keybroker/tests/framework"
)

// TestCentralMatrix is the central tier's process-level matrix, run once per
// root of trust: a softkms keystore, and a SoftHSM2 token through the pkcs11
// backend. Each row starts one real node and shares it across the subtests
// whose state does not interfere (each changes only keys of its own), then
// restarts it once to check that everything survives, stops it, and
// tampers with its audit log.
func TestCentralMatrix(t *testing.T) {
	// Ciphertexts of another cluster, under keys with the same names.
	foreign := foreignCiphertexts(t)
	for _, tc := range []struct {
		name  string
		roots func(*testing.T, string) *framework.Roots
	}{
		{"softkms", framework.SoftkmsRoots},
		{"pkcs11", framework.PKCS11Roots},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := newMatrix(t, tc.roots)
			t.Run("operations", m.operations)
			t.Run("lifecycle", m.lifecycle)
			t.Run("policy", m.policyMatrix)
			t.Run("authentication", m.authentication)
			t.Run("bad input", func(t *testing.T) { m.badInput(t, foreign) })
			t.Run("policy hot reload", m.hotReload)
			t.Run("ops endpoints", m.opsEndpoints)

			before := m.listKeys(t)
			m.p.Stop(t)
			m.checkNoPanic(t)
			m.connect(t, m.c.StartCentral(t))
			t.Run("restart", func(t *testing.T) { m.restarted(t, before) })
			m.p.Stop(t)
			m.checkNoPanic(t)
			t.Run("audit tamper", m.auditTamper)
		})
	}
}

// matrixRoots are the root keys of a matrix cluster: the PRF of derive
// mode, the AES key of wrap mode (and of backend-mode AES keys), and one
// root per backend-mode key type.
var matrixRoots = append(framework.BasicRoots[:len(framework.BasicRoots):len(framework.BasicRoots)],
	framework.RootKey{Object: "root-mac", Algorithm: "hmac-256"}, framework.RootKey{Object: "root-ec", Algorithm: "ecdsa-p256"}, framework.RootKey{Object: "root-ed", Algorithm: "ed25519"})

// keySpec is a managed key of the matrix.
type keySpec struct {
	id      string
	typ     kbv1.KeyType
	mode    kbv1.KeyMode
	derived bool
	// root is the root key object of a backend-mode key; empty means the
	// node's default for the mode.
	root string
}

const (
	typeAES     = kbv1.KeyType_KEY_TYPE_AES_256_GCM
	typeHMAC    = kbv1.KeyType_KEY_TYPE_HMAC_SHA256
	typeECDSA   = kbv1.KeyType_KEY_TYPE_ECDSA_P256
	typeEd25519 = kbv1.KeyType_KEY_TYPE_ED25519
	modeDerive  = kbv1.KeyMode_KEY_MODE_DERIVE
	modeWrap    = kbv1.KeyMode_KEY_MODE_WRAP
	modeBackend = kbv1.KeyMode_KEY_MODE_BACKEND
)

// matrixKeys is every key type in every mode the roots of trust allow.
func matrixKeys(roots *framework.Roots) []keySpec {
	keys := []keySpec{
		{id: "aes-derive", typ: typeAES, mode: modeDerive},
		{id: "aes-derive-ctx", typ: typeAES, mode: modeDerive, derived: true},
		{id: "aes-wrap", typ: typeAES, mode: modeWrap},
		{id: "aes-wrap-ctx", typ: typeAES, mode: modeWrap, derived: true},
		{id: "aes-backend", typ: typeAES, mode: modeBackend}, // default_root_keys.backend: root-hsm-aes
		{id: "hmac-derive", typ: typeHMAC, mode: modeDerive},
		{id: "hmac-wrap", typ: typeHMAC, mode: modeWrap},
		{id: "hmac-backend", typ: typeHMAC, mode: modeBackend, root: "root-mac"},
		{id: "ec-derive", typ: typeECDSA, mode: modeDerive},
		{id: "ec-wrap", typ: typeECDSA, mode: modeWrap},
		{id: "ec-backend", typ: typeECDSA, mode: modeBackend, root: "root-ec"},
		{id: "ed-derive", typ: typeEd25519, mode: modeDerive},
		{id: "ed-wrap", typ: typeEd25519, mode: modeWrap},
	}
	if roots.Ed25519 {
		keys = append(keys, keySpec{id: "ed-backend", typ: typeEd25519, mode: modeBackend, root: "root-ed"})
	}
	return keys
}

// rootRef is the root key URI a key's versions name.
func (s keySpec) rootRef(roots *framework.Roots) string {
	switch {
	case s.root != "":
		return roots.Ref(s.root)
	case s.mode == modeDerive:
		return roots.Ref("root-prf")
	case s.mode == modeBackend:
		return roots.Ref("root-hsm-aes")
	}
	return roots.Ref("root-aes")
}

// ownerLabels make a key usable by the clients of the trust domain (policy
// "app-keys").
var ownerLabels = map[string]string{"owner": framework.TrustDomain}

// unownedKey has no owner label: only admins and the "loose" client may
// use it.
const unownedKey = "unowned"

// matrix is one row of TestCentralMatrix: a cluster, its running node, and
// what the operations produced, checked again after the restart.
type matrix struct {
	c     *framework.Setup
	p     *framework.Proc
	procs []*framework.Proc // every process started, for the panic check
	specs []keySpec

	admin *framework.Conn // spiffe://kb.test/admin/ops
	app   *framework.Conn // spiffe://kb.test/client/billing

	sealed []sealedMsg
	signed []signedMsg
	macs   []macedMsg
	pubs   map[string][]byte // "key@version" → DER SubjectPublicKeyInfo
}

type sealedMsg struct {
	key       string
	version   uint32
	ectx      map[string]string
	plaintext []byte
	ct        []byte
}

type signedMsg struct {
	key     string
	typ     kbv1.KeyType
	version uint32
	msg     []byte
	digest  bool
	sig     []byte
}

type macedMsg struct {
	key     string
	version uint32
	msg     []byte
	mac     []byte
}

func newMatrix(t *testing.T, roots func(*testing.T, string) *framework.Roots) *matrix {
	t.Helper()
	c := framework.NewSetupOn(t, roots, matrixRoots)
	m := &matrix{c: c, specs: matrixKeys(c.Roots), pubs: map[string][]byte{}}
	m.connect(t, c.StartCentral(t))
	for _, s := range m.specs {
		m.createKey(t, s, ownerLabels)
	}
	m.createKey(t, keySpec{id: unownedKey, typ: typeAES, mode: modeDerive}, nil)
	return m
}

// connect makes p the matrix's node and dials it as the admin and the app.
func (m *matrix) connect(t *testing.T, p *framework.Proc) {
	m.p = p
	m.procs = append(m.procs, p)
	m.admin = m.c.Dial(t, p.Addr, identity.Admin, "ops")
	m.app = m.c.Dial(t, p.Addr, identity.Client, "billing")
}

// as dials the node as a client of the trust domain.
func (m *matrix) as(t *testing.T, name string) *framework.Conn {
	return m.c.Dial(t, m.p.Addr, identity.Client, name)
}

func (m *matrix) createKey(t *testing.T, s keySpec, labels map[string]string) *kbv1.KeyMetadata {
	t.Helper()
	req := &kbv1.CreateKeyRequest{KeyId: s.id, Type: s.typ, Mode: s.mode, Derived: s.derived, Labels: labels,
		Description: "e2e " + s.id}
	if s.root != "" {
		req.RootKey = m.c.Roots.Ref(s.root)
	}
	k, err := m.admin.Admin.CreateKey(t.Context(), req)
	if err != nil {
		t.Fatalf("CreateKey(%s %s %s derived=%v): %v", s.id, s.typ, s.mode, s.derived, err)
	}
	want := &kbv1.KeyMetadata{KeyId: s.id, Type: s.typ, Mode: s.mode, Derived: s.derived, State: kbv1.KeyState_KEY_STATE_ENABLED,
		PrimaryVersion: 1, RootKey: s.rootRef(m.c.Roots), Labels: labels, Description: "e2e " + s.id}
	got := &kbv1.KeyMetadata{KeyId: k.KeyId, Type: k.Type, Mode: k.Mode, Derived: k.Derived, State: k.State,
		PrimaryVersion: k.PrimaryVersion, RootKey: k.RootKey, Labels: k.Labels, Description: k.Description}
	if diff := cmp.Diff(want, got, protocmp.Transform()); diff != "" {
		t.Errorf("CreateKey(%s) metadata (-want +got):\n%s", s.id, diff)
	}
	if len(k.Versions) != 1 || k.Versions[0].Version != 1 {
		t.Errorf("CreateKey(%s) versions = %v, want just version 1", s.id, k.Versions)
	}
	return k
}

// listKeys returns every key's metadata, as the admin sees it.
func (m *matrix) listKeys(t *testing.T) map[string]*kbv1.KeyMetadata {
	t.Helper()
	out := map[string]*kbv1.KeyMetadata{}
	token := ""
	for {
		resp, err := m.admin.KB.ListKeys(t.Context(), &kbv1.ListKeysRequest{PageSize: 1000, PageToken: token})
		if err != nil {
			t.Fatalf("ListKeys: %v", err)
		}
		for _, k := range resp.Keys {
			out[k.KeyId] = k
		}
		if token = resp.NextPageToken; token == "" {
			return out
		}
	}
}

// checkNoPanic fails if any process of the row has written a panic or a
// data race report to stderr.
func (m *matrix) checkNoPanic(t *testing.T) {
	t.Helper()
	for i, p := range m.procs {
		if logs := p.Logs(); strings.Contains(strings.ToLower(logs), "panic") || strings.Contains(logs, "DATA RACE") {
			t.Errorf("central process %d wrote a panic or a race to stderr:\n%s", i+1, logs)
		}
	}
}

// must fails the test now on an error.
func must(t *testing.T, what string, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// wantStatus checks that err is a gRPC status with code want whose message
// contains every one of msgs.
func wantStatus(t *testing.T, what string, err error, want codes.Code, msgs ...string) {
	t.Helper()
	st := status.Convert(err)
	if st.Code() != want {
		t.Errorf("%s: code %v (%q), want %v", what, st.Code(), st.Message(), want)
		return
	}
	for _, msg := range msgs {
		if !strings.Contains(st.Message(), msg) {
			t.Errorf("%s: message %q, want it to contain %q", what, st.Message(), msg)
		}
	}
}

// foreignCiphertexts runs a cluster of its own (its own CA and root keys)
// with keys named as the matrix's AES keys, and returns a ciphertext of each
// under the context the matrix uses. The matrix's nodes must refuse them.
func foreignCiphertexts(t *testing.T) map[string][]byte {
	t.Helper()
	c := framework.NewSetupOn(t, framework.SoftkmsRoots, framework.BasicRoots)
	p := c.StartCentral(t)
	admin := c.Dial(t, p.Addr, identity.Admin, "ops")
	out := map[string][]byte{}
	for _, s := range []keySpec{{id: "aes-derive", mode: modeDerive}, {id: "aes-wrap-ctx", mode: modeWrap, derived: true}, {id: "aes-backend", mode: modeBackend}} {
		_, err := admin.Admin.CreateKey(t.Context(), &kbv1.CreateKeyRequest{KeyId: s.id, Type: typeAES, Mode: s.mode, Derived: s.derived})
		must(t, "foreign CreateKey "+s.id, err)
		enc, err := admin.KB.Encrypt(t.Context(), &kbv1.EncryptRequest{KeyId: s.id, Plaintext: []byte("foreign"), EncryptionContext: opsContext(s.id)})
		must(t, "foreign Encrypt "+s.id, err)
		out[s.id] = enc.Ciphertext
	}
	p.Stop(t)
	return out
}

// opsContext is the encryption context the operations use for key id.
func opsContext(id string) map[string]string {
	return map[string]string{"tenant": "42", "key": id}
}

func versionKey(id string, v uint32) string { return fmt.Sprintf("%s@%d", id, v) }
