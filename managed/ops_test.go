package managed

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/keybroker/keybroker/secret"
)

// keys is a KeySource and MaterialSource over fixed material, counting
// material requests.
type keys struct {
	m     map[string]*Key
	mat   map[string]*secret.Bytes
	calls int
}

func (s *keys) Get(_ context.Context, id string) (*Key, error) {
	k, ok := s.m[id]
	if !ok {
		return nil, Errorf(ErrNotFound, "key %q does not exist", id)
	}
	return k, nil
}

func (s *keys) Material(_ context.Context, k *Key, v uint32) (*secret.Bytes, error) {
	s.calls++
	return s.mat[k.ID].Clone(), nil
}

func newOps(t testing.TB) (byID, *keys) {
	t.Helper()
	now := time.Unix(1_700_000_000, 0).UTC()
	src := &keys{m: map[string]*Key{}, mat: map[string]*secret.Bytes{}}
	for _, k := range []*Key{
		{ID: "aes", Type: AES256GCM, Mode: ModeDerive},
		{ID: "ctx", Type: AES256GCM, Mode: ModeWrap, Derived: true},
		{ID: "mac", Type: HMACSHA256, Mode: ModeDerive},
		{ID: "ed", Type: Ed25519, Mode: ModeDerive},
		{ID: "ec", Type: ECDSAP256, Mode: ModeDerive},
		{ID: "hsm", Type: AES256GCM, Mode: ModeBackend},
	} {
		raw := make([]byte, 32)
		_, _ = rand.Read(raw)
		src.mat[k.ID] = secret.New(raw)
		k.State, k.Primary = StateEnabled, 1
		k.Versions = []Version{{Version: 1, Created: now, RootKey: "softkms:r"}}
		if k.Type.Asymmetric() {
			sk, err := SigningKey(k.Type, src.mat[k.ID])
			if err != nil {
				t.Fatal(err)
			}
			if k.Versions[0].PublicKey, err = marshalPub(sk.Public()); err != nil {
				t.Fatal(err)
			}
		}
		src.m[k.ID] = k
	}
	ops, err := New(Config{Material: src, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	o := byID{ops, src}
	return o, src
}

func TestOpsWithoutBackend(t *testing.T) {
	ctx := t.Context()
	o, src := newOps(t)
	ectx := map[string]string{"tenant": "7"}
	for _, id := range []string{"aes", "ctx"} {
		ct, k, err := o.Encrypt(ctx, id, []byte("hello"), ectx)
		if err != nil || k.ID != id {
			t.Fatalf("Encrypt(%s) = %v, %v", id, k, err)
		}
		pt, _, v, err := o.Decrypt(ctx, ct, ectx, id)
		if err != nil || string(pt) != "hello" || v != 1 {
			t.Errorf("Decrypt(%s) = %q, v%d, %v; want hello, v1", id, pt, v, err)
		}
		if _, _, _, err := o.Decrypt(ctx, ct, map[string]string{"tenant": "8"}, ""); !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("Decrypt(%s) with the wrong context = %v, want ErrInvalidArgument", id, err)
		}
	}
	// One material request per key for all of the above: the reuse and
	// unwrap caches serve the rest.
	before := src.calls
	for range 100 {
		if _, _, err := o.Encrypt(ctx, "aes", []byte("x"), nil); err != nil {
			t.Fatal(err)
		}
	}
	if src.calls != before {
		t.Errorf("100 warm encrypts asked for material %d times, want 0", src.calls-before)
	}

	tag, _, err := o.GenerateMac(ctx, "mac", []byte("m"))
	if err != nil {
		t.Fatal(err)
	}
	if ok, _, err := o.VerifyMac(ctx, "mac", 0, []byte("m"), tag); !ok || err != nil {
		t.Errorf("VerifyMac = %v, %v; want true", ok, err)
	}
	for _, id := range []string{"ed", "ec"} {
		sig, _, err := o.Sign(ctx, id, []byte("msg"), false)
		if err != nil {
			t.Fatal(err)
		}
		if ok, v, err := o.Verify(ctx, id, 0, []byte("msg"), false, sig); !ok || v != 1 || err != nil {
			t.Errorf("Verify(%s) = %v, %d, %v; want true, 1", id, ok, v, err)
		}
		if ok, _, _ := o.Verify(ctx, id, 0, []byte("other"), false, sig); ok {
			t.Errorf("Verify(%s) accepted a signature over another message", id)
		}
	}

	// Without a Backend, backend-mode keys are refused, not mishandled.
	if _, _, err := o.Encrypt(ctx, "hsm", []byte("x"), nil); !errors.Is(err, ErrFailedPrecondition) {
		t.Errorf("Encrypt(backend-mode key) without a backend = %v, want ErrFailedPrecondition", err)
	}
	if _, _, err := o.Encrypt(ctx, "nope", []byte("x"), nil); !errors.Is(err, ErrNotFound) {
		t.Errorf("Encrypt(unknown) = %v, want ErrNotFound", err)
	}
	if _, _, err := o.GenerateMac(ctx, "aes", []byte("x")); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("GenerateMac(aes key) = %v, want ErrInvalidArgument", err)
	}
}

func TestPage(t *testing.T) {
	var all []*Key
	for _, id := range []string{"a", "b", "c", "d"} {
		all = append(all, &Key{ID: id, Labels: map[string]string{"team": map[bool]string{true: "x", false: "y"}[id < "c"]}})
	}
	got, next, err := Page(all, map[string]string{"team": "x"}, 1, "", nil)
	if err != nil || len(got) != 1 || got[0].ID != "a" || next != PageToken(map[string]string{"team": "x"}, "a") {
		t.Fatalf("Page 1 = %v, %q, %v", got, next, err)
	}
	got, next, _ = Page(all, map[string]string{"team": "x"}, 1, next, nil)
	if len(got) != 1 || got[0].ID != "b" {
		t.Fatalf("Page 2 = %v, %q", got, next)
	}
	if _, _, err := Page(all, nil, MaxListPageSize+1, "", nil); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("Page(oversized) = %v, want ErrInvalidArgument", err)
	}
}

// TestPageToken: a token gives back its id with its selector, and any
// other token — raw, altered, made for another selector — is refused.
func TestPageToken(t *testing.T) {
	sel := map[string]string{"team": "x", "env": "prod"}
	tok := PageToken(sel, "tenant-0042")
	if after, err := PageAfter(tok, map[string]string{"env": "prod", "team": "x"}); err != nil || after != "tenant-0042" {
		t.Errorf("PageAfter(own token) = %q, %v; want tenant-0042", after, err)
	}
	if after, err := PageAfter("", sel); err != nil || after != "" {
		t.Errorf("PageAfter(\"\") = %q, %v; want the start", after, err)
	}
	for name, bad := range map[string]string{
		"raw id":            "tenant-0042",
		"other selector":    PageToken(map[string]string{"team": "x"}, "tenant-0042"),
		"no id":             pageTokenPrefix + "AAAAAAAAAAA",
		"not base64":        pageTokenPrefix + "!!!",
		"truncated":         tok[:len(tok)-3],
		"invalid id inside": PageToken(sel, "../etc"),
		"other version":     "k2." + strings.TrimPrefix(tok, pageTokenPrefix),
	} {
		if after, err := PageAfter(bad, sel); !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("PageAfter(%s %q) = %q, %v; want ErrInvalidArgument", name, bad, after, err)
		}
	}
}

// TestPageVisible pages through only the keys visible keeps: pages are
// full, and no token names a key the caller was not shown.
func TestPageVisible(t *testing.T) {
	var all []*Key
	for i := range 50 {
		all = append(all, &Key{ID: fmt.Sprintf("k%02d", i)})
	}
	visible := func(k *Key) bool { return k.ID[2]%3 == 0 } // k00 k03 k06 k09 k10 k13 …
	var want []string
	for _, k := range all {
		if visible(k) {
			want = append(want, k.ID)
		}
	}
	var got []string
	token := ""
	for page := 0; ; page++ {
		keys, next, err := Page(all, nil, 4, token, visible)
		if err != nil {
			t.Fatalf("Page %d: %v", page, err)
		}
		if next != "" && len(keys) != 4 {
			t.Errorf("Page %d holds %d keys and a next token, want 4", page, len(keys))
		}
		for _, k := range keys {
			got = append(got, k.ID)
		}
		if next == "" {
			break
		}
		if after, err := PageAfter(next, nil); err != nil || after != keys[len(keys)-1].ID {
			t.Errorf("Page %d token = %q (after %q, %v), want the page's last key %q", page, next, after, err, keys[len(keys)-1].ID)
		}
		token = next
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("paged keys = %v, want %v", got, want)
	}
}

func marshalPub(pub any) ([]byte, error) { return x509.MarshalPKIXPublicKey(pub) }
