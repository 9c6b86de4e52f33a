package keybrokertest_test

import (
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/keybroker/keybroker/keybrokertest"
)

// TestPayments is the README's example, word for word (TestReadmeExample
// checks that).
func TestPayments(t *testing.T) {
	kb := keybrokertest.Start(t, keybrokertest.WithSoftHSM(), keybrokertest.WithKeys("payments"))
	app := kb.Client(t) // the app principal, at edge-us

	ct, err := app.Encrypt(t.Context(), "payments", []byte("card 4111"), map[string]string{"order": "7"})
	if err != nil {
		t.Fatal(err)
	}
	central := kb.Client(t, keybrokertest.At(kb.CentralAddr()))
	pt, err := central.Decrypt(t.Context(), ct.Ciphertext, map[string]string{"order": "7"})
	if err != nil || string(pt.Plaintext) != "card 4111" {
		t.Fatalf("Decrypt at central = %v, %v", pt, err)
	}
	mallory := kb.Client(t, keybrokertest.As("mallory"))
	if _, err := mallory.Decrypt(t.Context(), ct.Ciphertext, map[string]string{"order": "8"}); err == nil {
		t.Fatal("Decrypt under another encryption context succeeded")
	}
}

// TestReadmeExample: the README's keybrokertest section shows TestPayments
// as it is in this file, so the example there compiles and passes.
func TestReadmeExample(t *testing.T) {
	t.Parallel()
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	src, err := os.ReadFile("readme_test.go")
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(readme), "\n### Integration tests: keybrokertest\n")
	if !ok {
		t.Fatal("the README has no \"### Integration tests: keybrokertest\" section")
	}
	m := regexp.MustCompile("(?s)```go\n(.*?)```").FindStringSubmatch(section)
	if m == nil {
		t.Fatal("the README's keybrokertest section has no go block")
	}
	fn := regexp.MustCompile(`(?s)\nfunc TestPayments\(t \*testing.T\) \{\n.*?\n\}\n`).FindString(string(src))
	if fn == "" {
		t.Fatal("readme_test.go has no TestPayments")
	}
	if !strings.Contains(m[1], strings.TrimPrefix(fn, "\n")) {
		t.Errorf("the README's example is not readme_test.go's TestPayments:\nREADME:\n%s\nreadme_test.go:\n%s", m[1], fn)
	}
}
