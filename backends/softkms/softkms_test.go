package softkms

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/keybroker/keybroker/backends"
	"github.com/keybroker/keybroker/backends/backendtest"
)

// testKDF keeps passphrase tests fast; production uses DefaultKDF.
var testKDF = KDFParams{Time: 1, Memory: 64, Threads: 1}

func writeFile(t *testing.T, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func kekFile(t *testing.T) string {
	return writeFile(t, "kek", []byte(strings.Repeat("ab", 32)+"\n"))
}

func TestConformance(t *testing.T) {
	dir := t.TempDir()
	cfg := Config{Path: filepath.Join(dir, "keystore.json"), KEKFile: kekFile(t)}
	var n atomic.Int64
	first := true
	backendtest.Run(t, func(t *testing.T) *backendtest.Fixture {
		c := cfg
		if !first {
			// The suite's Close test opens a second backend while the first
			// holds the keystore lock: give it a copy of the keystore.
			data, err := os.ReadFile(cfg.Path)
			if err != nil {
				t.Fatal(err)
			}
			c.Path = writeFile(t, "copy.json", data)
		}
		b, err := New(t.Context(), c)
		if err != nil {
			t.Fatalf("New: %v", err)
		}
		if first {
			first = false
			for name, alg := range map[string]backends.Algorithm{
				"aes-1": backends.AES256, "aes-2": backends.AES256, "off": backends.AES256,
				"hmac-1": backends.HMAC256, "hmac-2": backends.HMAC256,
				"ec-1": backends.ECDSAP256, "ed-1": backends.Ed25519,
			} {
				if _, err := b.CreateKey(t.Context(), name, alg); err != nil {
					t.Fatalf("CreateKey(%s): %v", name, err)
				}
			}
			if err := b.SetEnabled(t.Context(), "off", false); err != nil {
				t.Fatal(err)
			}
		}
		return &backendtest.Fixture{
			Backend: b, AES: "aes-1", AES2: "aes-2", HMAC: "hmac-1", HMAC2: "hmac-2",
			ECDSA: "ec-1", Ed25519: "ed-1", Disabled: "off", Unknown: "no-such-key",
			Caps: backends.Capabilities{MAC: true, Sign: true, Create: true, Health: true, DataKey: true,
				Creates: []backends.Algorithm{backends.AES256, backends.HMAC256, backends.ECDSAP256, backends.Ed25519}},
			NewName: func() string { return fmt.Sprintf("new-%d", n.Add(1)) },
		}
	})
}

func TestPersistAndReopen(t *testing.T) {
	ctx := t.Context()
	for _, tc := range []struct {
		name string
		cfg  func(t *testing.T, path string) Config
	}{
		{"kek file", func(t *testing.T, path string) Config { return Config{Path: path, KEKFile: kekFile(t)} }},
		{"passphrase", func(t *testing.T, path string) Config {
			return Config{Path: path, PassphraseFile: writeFile(t, "pass", []byte("correct horse battery\n")), KDF: testKDF}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "ks.json")
			cfg := tc.cfg(t, path)
			b, err := New(ctx, cfg)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := b.CreateKey(ctx, "root", backends.AES256); err != nil {
				t.Fatal(err)
			}
			if _, err := b.CreateKey(ctx, "prf", backends.HMAC256); err != nil {
				t.Fatal(err)
			}
			ct, err := b.Encrypt(ctx, "root", []byte("material"), []byte("aad"))
			if err != nil {
				t.Fatal(err)
			}
			tag, err := b.MAC(ctx, "prf", []byte("x"))
			if err != nil {
				t.Fatal(err)
			}
			if err := b.Close(); err != nil {
				t.Fatal(err)
			}

			st, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			if st.Mode().Perm() != 0o600 {
				t.Errorf("keystore mode = %v, want 0600", st.Mode().Perm())
			}
			raw, _ := os.ReadFile(path)
			if bytes.Contains(raw, []byte("material")) {
				t.Error("keystore file contains plaintext")
			}

			b2, err := New(ctx, cfg)
			if err != nil {
				t.Fatalf("reopen: %v", err)
			}
			defer b2.Close()
			pt, err := b2.Decrypt(ctx, "root", ct, []byte("aad"))
			if err != nil || string(pt.Reveal()) != "material" {
				t.Errorf("Decrypt after reopen = %v, %v; want material", pt, err)
			}
			tag2, err := b2.MAC(ctx, "prf", []byte("x"))
			if err != nil || !tag.Equal(tag2) {
				t.Errorf("MAC after reopen differs (err %v): derived material would change", err)
			}
		})
	}
}

func TestWrongKEK(t *testing.T) {
	ctx := t.Context()
	path := filepath.Join(t.TempDir(), "ks.json")
	pass := writeFile(t, "pass", []byte("the right passphrase"))
	b, err := New(ctx, Config{Path: path, PassphraseFile: pass, KDF: testKDF})
	if err != nil {
		t.Fatal(err)
	}
	b.Close()
	_, err = New(ctx, Config{Path: path, PassphraseFile: writeFile(t, "wrong", []byte("the wrong passphrase"))})
	if !errors.Is(err, backends.ErrPermissionDenied) || !strings.Contains(err.Error(), "wrong") {
		t.Errorf("open with the wrong passphrase: err = %v, want permission denied saying it is wrong", err)
	}
	_, err = New(ctx, Config{Path: path, KEKFile: kekFile(t)})
	if !errors.Is(err, backends.ErrInvalidArgument) {
		t.Errorf("open a passphrase keystore with a KEK file: err = %v, want invalid argument", err)
	}
}

func TestLocked(t *testing.T) {
	cfg := Config{Path: filepath.Join(t.TempDir(), "ks.json"), KEKFile: kekFile(t)}
	b, err := New(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	_, err = New(t.Context(), cfg)
	if err == nil || !strings.Contains(err.Error(), "in use") {
		t.Errorf("second open of a locked keystore: err = %v, want 'in use'", err)
	}
}

func TestBadConfigsAndFiles(t *testing.T) {
	ctx := t.Context()
	dir := t.TempDir()
	good := kekFile(t)
	for _, tc := range []struct {
		name string
		cfg  Config
		file string // keystore content, if any
		want string
	}{
		{"no path", Config{KEKFile: good}, "", "no keystore path"},
		{"no kek", Config{Path: filepath.Join(dir, "a")}, "", "exactly one"},
		{"both", Config{Path: filepath.Join(dir, "b"), KEKFile: good, PassphraseFile: good}, "", "exactly one"},
		{"short kek", Config{Path: filepath.Join(dir, "c"), KEKFile: writeFile(t, "short", []byte("abc"))}, "", "32 raw bytes"},
		{"missing kek", Config{Path: filepath.Join(dir, "d"), KEKFile: filepath.Join(dir, "nope")}, "", "reading KEK file"},
		{"short passphrase", Config{Path: filepath.Join(dir, "e"), PassphraseFile: writeFile(t, "p", []byte("short"))}, "", "shorter than 8"},
		{"not json", Config{Path: filepath.Join(dir, "f"), KEKFile: good}, "garbage", "not a softkms keystore"},
		{"other format", Config{Path: filepath.Join(dir, "g"), KEKFile: good}, `{"format":"x"}`, "format"},
		{"bad kdf", Config{Path: filepath.Join(dir, "h"), KEKFile: good}, `{"format":"keybroker-softkms/v1","kdf":{"name":"md5"}}`, "unknown KDF"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.file != "" {
				if err := os.WriteFile(tc.cfg.Path, []byte(tc.file), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			b, err := New(ctx, tc.cfg)
			if err == nil {
				b.Close()
				t.Fatalf("New succeeded, want error containing %q", tc.want)
			}
			if !strings.Contains(err.Error(), tc.want) || !errors.Is(err, backends.ErrInvalidArgument) {
				t.Errorf("New error = %v, want invalid argument containing %q", err, tc.want)
			}
		})
	}
}

func TestTamperedKeyEntryRefused(t *testing.T) {
	ctx := t.Context()
	cfg := Config{Path: filepath.Join(t.TempDir(), "ks.json"), KEKFile: kekFile(t)}
	b, err := New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.CreateKey(ctx, "hmac", backends.HMAC256); err != nil {
		t.Fatal(err)
	}
	b.Close()
	// Relabel the HMAC key as an AES key: the sealed secret is bound to its
	// algorithm, so the keystore must refuse to open.
	raw, _ := os.ReadFile(cfg.Path)
	raw = bytes.Replace(raw, []byte(`"hmac-256"`), []byte(`"aes-256"`), 1)
	if err := os.WriteFile(cfg.Path, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := New(ctx, cfg); err == nil || !strings.Contains(err.Error(), "does not open") {
		t.Errorf("open with a relabelled key: err = %v, want refusal", err)
	}
}

func TestOpenURI(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ks.json")
	uri := "softkms:root;path=" + path + ";kek-source=" + kekFile(t)
	r := backends.NewRegistry()
	if err := r.Register("softkms", Open); err != nil {
		t.Fatal(err)
	}
	b, err := r.Open(t.Context(), uri, backends.Options{})
	if err != nil {
		t.Fatalf("Open(%q): %v", uri, err)
	}
	defer b.Close()
	if _, err := b.(backends.KeyCreator).CreateKey(t.Context(), "root", backends.AES256); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Open(t.Context(), "softkms:root", backends.Options{}); err == nil {
		t.Error("Open without a path succeeded")
	}
}

func TestCanceledOpen(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	_, err := New(ctx, Config{Path: filepath.Join(t.TempDir(), "x"), KEKFile: kekFile(t)})
	if !errors.Is(err, context.Canceled) {
		t.Errorf("New with cancelled ctx: err = %v, want context.Canceled", err)
	}
}

func BenchmarkBackend(b *testing.B) {
	dir := b.TempDir()
	kek := filepath.Join(dir, "kek")
	if err := os.WriteFile(kek, []byte(strings.Repeat("cd", 32)), 0o600); err != nil {
		b.Fatal(err)
	}
	be, err := New(b.Context(), Config{Path: filepath.Join(dir, "ks.json"), KEKFile: kek})
	if err != nil {
		b.Fatal(err)
	}
	defer be.Close()
	for name, alg := range map[string]backends.Algorithm{"aes": backends.AES256, "hmac": backends.HMAC256, "ec": backends.ECDSAP256} {
		if _, err := be.CreateKey(b.Context(), name, alg); err != nil {
			b.Fatal(err)
		}
	}
	backendtest.Bench(b, &backendtest.Fixture{Backend: be, AES: "aes", HMAC: "hmac", ECDSA: "ec"})
}
