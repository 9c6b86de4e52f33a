package devcluster

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/keybroker/keybroker/backends"
	"github.com/keybroker/keybroker/backends/softkms"
)

// TestDevRootKeysFor checks the names and URIs of the root keys on every
// kind of backend: short URIs for the registry, full ones for `keybroker
// root create`.
func TestDevRootKeysFor(t *testing.T) {
	type key struct{ Role, Name, URI, CreateURI string }
	tests := []struct {
		backend string
		want    []key
	}{
		{"softkms:path=/d/softkms.json;kek-source=/d/kek", []key{
			{"derive", "root-prf", "softkms:root-prf", "softkms:root-prf;path=/d/softkms.json;kek-source=/d/kek"},
			{"wrap", "root-aes", "softkms:root-aes", "softkms:root-aes;path=/d/softkms.json;kek-source=/d/kek"},
			{"backend", "root-ecdsa", "softkms:root-ecdsa", "softkms:root-ecdsa;path=/d/softkms.json;kek-source=/d/kek"},
		}},
		{"pkcs11:token=kb?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=/etc/kb/pin", []key{
			{"derive", "root-prf", "pkcs11:token=kb;object=root-prf",
				"pkcs11:token=kb;object=root-prf?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=/etc/kb/pin"},
			{"wrap", "root-aes", "pkcs11:token=kb;object=root-aes",
				"pkcs11:token=kb;object=root-aes?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=/etc/kb/pin"},
		}},
		{"awskms:region=eu-west-1;endpoint=http://127.0.0.1:4566", []key{
			{"derive", "alias/keybroker-dev-root-prf", "awskms:key-id=alias/keybroker-dev-root-prf;region=eu-west-1",
				"awskms:key-id=alias/keybroker-dev-root-prf;region=eu-west-1;endpoint=http://127.0.0.1:4566"},
			{"wrap", "alias/keybroker-dev-root-aes", "awskms:key-id=alias/keybroker-dev-root-aes;region=eu-west-1",
				"awskms:key-id=alias/keybroker-dev-root-aes;region=eu-west-1;endpoint=http://127.0.0.1:4566"},
		}},
		{"gcpkms:projects/p/locations/l/keyRings/r;endpoint=127.0.0.1:9000", []key{
			{"derive", "projects/p/locations/l/keyRings/r/cryptoKeys/root-prf/cryptoKeyVersions/1",
				"gcpkms:projects/p/locations/l/keyRings/r/cryptoKeys/root-prf/cryptoKeyVersions/1",
				"gcpkms:projects/p/locations/l/keyRings/r/cryptoKeys/root-prf/cryptoKeyVersions/1;endpoint=127.0.0.1:9000"},
			{"wrap", "projects/p/locations/l/keyRings/r/cryptoKeys/root-aes",
				"gcpkms:projects/p/locations/l/keyRings/r/cryptoKeys/root-aes",
				"gcpkms:projects/p/locations/l/keyRings/r/cryptoKeys/root-aes;endpoint=127.0.0.1:9000"},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.backend, func(t *testing.T) {
			keys, err := rootKeysFor(tt.backend)
			if err != nil {
				t.Fatal(err)
			}
			var got []key
			for _, k := range keys {
				got = append(got, key{k.Role, k.Name, k.URI, k.CreateURI})
				// Every short URI must be held by the backend, as
				// config's default_root_keys check demands.
				bu, _ := backends.ParseKeyURI(tt.backend)
				ku, err := backends.ParseKeyURI(k.URI)
				if err != nil || !backends.Holds(bu, ku) {
					t.Errorf("%s is not held by %s (%v)", k.URI, tt.backend, err)
				}
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("rootKeysFor(%q) mismatch (-want +got):\n%s", tt.backend, diff)
			}
		})
	}
	for _, bad := range []string{
		"pkcs11:token=kb;object=root-1?module-path=/m.so&pin-source=/p",
		"softkms:root-1;path=/d/softkms.json;kek-source=/d/kek",
		"gcpkms:projects/p/locations/l/keyRings/r/cryptoKeys/k",
		"nosuch:x",
	} {
		if _, err := rootKeysFor(bad); err == nil {
			t.Errorf("rootKeysFor(%q) succeeded, want an error", bad)
		}
	}
}

// creatorless hides every capability of a backend but the core.
type creatorless struct{ backends.Backend }

// TestDevMissingRootKeys: a backend that cannot create keys is refused
// with the list of keys to create; one that has them all is used as it is.
func TestDevMissingRootKeys(t *testing.T) {
	dir := t.TempDir()
	kek := filepath.Join(dir, "kek")
	if err := os.WriteFile(kek, []byte(strings.Repeat("ab", 32)), 0o600); err != nil {
		t.Fatal(err)
	}
	uri := (&backends.SoftKMSURI{Path: filepath.Join(dir, "softkms.json"), KEKSource: kek}).String()
	b, err := softkms.Open(t.Context(), uri, backends.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	keys, err := rootKeysFor(uri)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.(backends.KeyCreator).CreateKey(t.Context(), rootPRF, backends.HMAC256); err != nil {
		t.Fatal(err)
	}

	err = ensureRootKeysIn(t.Context(), creatorless{b}, keys)
	var missing *MissingRootKeysError
	if !errors.As(err, &missing) {
		t.Fatalf("ensureRootKeysIn without KeyCreator = %v, want a *MissingRootKeysError", err)
	}
	var names []string
	for _, k := range missing.Keys {
		names = append(names, k.Name)
	}
	if diff := cmp.Diff([]string{rootAES, rootECDSA}, names); diff != "" {
		t.Errorf("missing keys (-want +got):\n%s", diff)
	}
	for _, want := range []string{"cannot create keys", "root-aes (aes-256): keybroker root create 'softkms:root-aes;path=", "--algorithm ecdsa-p256"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not contain %q", err, want)
		}
	}

	// The real backend creates what is missing and keeps what exists.
	if err := ensureRootKeysIn(t.Context(), b, keys); err != nil {
		t.Fatal(err)
	}
	if err := ensureRootKeysIn(t.Context(), creatorless{b}, keys); err != nil {
		t.Errorf("ensureRootKeysIn with every key present = %v, want nil", err)
	}
	for _, k := range keys {
		info, err := b.Describe(t.Context(), k.Name)
		if err != nil || info.Algorithm != k.Algorithm {
			t.Errorf("Describe(%s) = %+v, %v; want %s", k.Name, info, err, k.Algorithm)
		}
	}

	// A key of the wrong algorithm under a root key's name is an error,
	// not a silent success.
	wrong := []RootKey{{Role: "wrap", Name: rootPRF, create: rootPRF, Algorithm: backends.AES256}}
	if err := ensureRootKeysIn(t.Context(), b, wrong); err == nil || !strings.Contains(err.Error(), "is hmac-256 in the backend, not aes-256") {
		t.Errorf("ensureRootKeysIn with a wrong algorithm = %v", err)
	}
}
