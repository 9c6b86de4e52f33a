package accesskey

import (
	"bytes"
	"encoding/base64"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keybroker/keybroker/backends"
	"github.com/keybroker/keybroker/backends/softkms"
	"github.com/keybroker/keybroker/identity"
	"github.com/keybroker/keybroker/managed"
)

var app = identity.Identity{TrustDomain: "kb.example", Kind: identity.Client, Name: "app"}

func softRoot(t *testing.T) *softkms.Backend {
	t.Helper()
	dir := t.TempDir()
	kek := filepath.Join(dir, "kek")
	if err := os.WriteFile(kek, []byte(strings.Repeat("33", 32)), 0o600); err != nil {
		t.Fatal(err)
	}
	b, err := softkms.New(t.Context(), softkms.Config{Path: filepath.Join(dir, "softkms.json"), KEKFile: kek})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	if _, err := b.CreateKey(t.Context(), "prf", backends.HMAC256); err != nil {
		t.Fatal(err)
	}
	return b
}

// TestSecretDerivedInTheRoot: a key's secret is derived by the root's
// HMAC, the same each time, 40 base64 characters; another key — or the
// same id made again with a fresh salt — has another secret.
func TestSecretDerivedInTheRoot(t *testing.T) {
	root := softRoot(t)
	now := time.Date(2026, 12, 7, 0, 0, 0, 0, time.UTC)
	a, err := New(app, nil, "softkms:prf", "spiffe://kb.example/admin/ops", now)
	if err != nil {
		t.Fatal(err)
	}
	s1, err := Secret(t.Context(), root, "prf", a)
	if err != nil {
		t.Fatal(err)
	}
	s2, err := Secret(t.Context(), root, "prf", a)
	if err != nil || s1 != s2 {
		t.Fatalf("derived twice: %q, %q, %v", s1, s2, err)
	}
	if raw, err := base64.StdEncoding.DecodeString(s1); len(s1) != SecretSize || err != nil || len(raw) != 30 {
		t.Errorf("secret %q: %d characters, %v", s1, len(s1), err)
	}
	b, _ := New(app, nil, "softkms:prf", "spiffe://kb.example/admin/ops", now)
	again := *a
	again.Salt = b.Salt
	for name, other := range map[string]*Record{"another key": b, "the id made again": &again} {
		if s, err := Secret(t.Context(), root, "prf", other); err != nil || s == s1 {
			t.Errorf("%s: secret %q, %v; want a different one", name, s, err)
		}
	}
}

// TestDeriveInputIsItsOwnDomain: no key's material input or backend-mode
// MAC input of package managed is an access key's secret input.
func TestDeriveInputIsItsOwnDomain(t *testing.T) {
	a, err := New(app, nil, "softkms:prf", "spiffe://kb.example/admin/ops", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	in := DeriveInput(a)
	k := &managed.Key{ID: a.ID, Salt: bytes.Repeat(a.Salt, 2)}
	for _, d := range []managed.Domain{managed.DomainMaterial, managed.DomainWrap, managed.DomainBackendDataKey, managed.DomainBackendMAC} {
		other := k.Input(d, 1)
		label, _, _ := bytes.Cut(other, []byte{0})
		if bytes.HasPrefix(in, append(label, 0)) {
			t.Errorf("domain %q shares the access key label", label)
		}
	}
	if !bytes.HasPrefix(in, []byte(DeriveLabel+"\x00")) {
		t.Errorf("input does not start with its label: %q", in)
	}
}

// TestRecords: what New makes validates and round-trips; what a store
// could hold otherwise is refused by name.
func TestRecords(t *testing.T) {
	a, err := New(app, nil, "softkms:prf", "spiffe://kb.example/admin/ops", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if !ValidID(a.ID) || !strings.HasPrefix(a.ID, IDPrefix) || len(a.ID) != 20 {
		t.Errorf("id %q", a.ID)
	}
	data, err := a.Encode()
	if err != nil {
		t.Fatal(err)
	}
	back, err := Decode(data)
	if err != nil || back.ID != a.ID || !bytes.Equal(back.Salt, a.Salt) || back.Principal != app.String() {
		t.Fatalf("round trip: %+v, %v", back, err)
	}
	for _, kind := range []identity.Kind{identity.Edge, identity.Central} {
		if _, err := New(identity.Identity{TrustDomain: "kb.example", Kind: kind, Name: "n"}, nil, "softkms:prf", "x", time.Now()); !errors.Is(err, ErrInvalid) {
			t.Errorf("an access key for %s: %v, want ErrInvalid", kind, err)
		}
	}
	for name, mutate := range map[string]func(r *Record){
		"bad id":        func(r *Record) { r.ID = "AKIA0000000000000000" },
		"lower case id": func(r *Record) { r.ID = strings.ToLower(r.ID) },
		"state":         func(r *Record) { r.State = "paused" },
		"short salt":    func(r *Record) { r.Salt = r.Salt[:8] },
		"no root":       func(r *Record) { r.Root = "" },
		"principal":     func(r *Record) { r.Principal = "client/app" },
		"edge":          func(r *Record) { r.Principal = "spiffe://kb.example/edge/e1" },
	} {
		r := *a
		mutate(&r)
		if err := r.Validate(); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: %v, want ErrInvalid", name, err)
		}
	}
	if _, err := Decode([]byte("{")); !errors.Is(err, ErrInvalid) {
		t.Errorf("corrupt record: %v", err)
	}
}

// TestEdgeScope: a client's key may be scoped to distinct edges, which it
// keeps through its stored form; an admin's may not (an edge holding its
// signing key would be an admin), nor may a record read back claim such a
// scope, name an edge twice or name something that is not a node id.
func TestEdgeScope(t *testing.T) {
	admin := identity.Identity{TrustDomain: "kb.example", Kind: identity.Admin, Name: "ops"}
	a, err := New(app, []string{"edge-us", "edge-eu"}, "softkms:prf", "spiffe://kb.example/admin/ops", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	data, err := a.Encode()
	if err != nil {
		t.Fatal(err)
	}
	back, err := Decode(data)
	if err != nil {
		t.Fatal(err)
	}
	if !back.EdgeScoped() || !back.ScopedTo("edge-us") || !back.ScopedTo("edge-eu") || back.ScopedTo("edge-ap") {
		t.Errorf("round trip: edges %q, want edge-eu and edge-us only", back.Edges)
	}
	if plain, _ := New(app, nil, "softkms:prf", "x", time.Now()); plain.EdgeScoped() || plain.ScopedTo("") {
		t.Errorf("a key made without edges is scoped: %q", plain.Edges)
	}
	for name, edges := range map[string][]string{
		"twice":       {"edge-us", "edge-us"},
		"not a name":  {"edge us"},
		"empty":       {""},
		"a spiffe id": {"spiffe://kb.example/edge/edge-us"},
		"too many":    strings.Split("a b c d e f g h i j k l m n o p q", " "),
	} {
		if _, err := New(app, edges, "softkms:prf", "x", time.Now()); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: %v, want ErrInvalid", name, err)
		}
	}
	if _, err := New(admin, []string{"edge-us"}, "softkms:prf", "x", time.Now()); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "only a client") {
		t.Errorf("an edge-scoped admin key: %v, want ErrInvalid naming clients", err)
	}
	r := *a
	r.Principal = admin.String()
	if err := r.Validate(); !errors.Is(err, ErrInvalid) {
		t.Errorf("a stored admin key with edges: %v, want ErrInvalid", err)
	}
}
