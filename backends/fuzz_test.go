package backends

import (
	"errors"
	"testing"
)

// fuzzParser checks the invariants every URI parser keeps: no panic, every
// error is ErrInvalidArgument, and an accepted URI's canonical form parses
// again to the same canonical form, key and backend, through its own
// parser and through ParseKeyURI; its BackendURI parses to a URI of the
// same scheme and backend that names no key.
func fuzzParser[U KeyURI](f *testing.F, parse func(string) (U, error), seeds ...string) {
	for _, s := range seeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		u, err := parse(s)
		if err != nil {
			if !errors.Is(err, ErrInvalidArgument) {
				t.Fatalf("parse(%q) error %v is not an invalid-argument error", s, err)
			}
			return
		}
		canon := u.String()
		again, err := parse(canon)
		if err != nil {
			t.Fatalf("canonical form %q of %q does not parse: %v", canon, s, err)
		}
		if again.String() != canon || again.Key() != u.Key() || again.BackendURI() != u.BackendURI() {
			t.Fatalf("canonical form is not stable: %q -> %q (key %q -> %q)", canon, again.String(), u.Key(), again.Key())
		}
		if g, err := ParseKeyURI(canon); err != nil || g.String() != canon || g.Scheme() != u.Scheme() {
			t.Fatalf("ParseKeyURI(%q) = %v, %v", canon, g, err)
		}
		b, err := ParseKeyURI(u.BackendURI())
		if err != nil {
			t.Fatalf("BackendURI %q of %q does not parse: %v", u.BackendURI(), s, err)
		}
		if b.Scheme() != u.Scheme() || b.BackendURI() != u.BackendURI() || b.Key() != "" {
			t.Fatalf("BackendURI %q of %q parses to scheme %q, backend %q, key %q", u.BackendURI(), s, b.Scheme(), b.BackendURI(), b.Key())
		}
	})
}

func FuzzParsePKCS11URI(f *testing.F) {
	fuzzParser(f, ParsePKCS11URI,
		"pkcs11:token=keybroker;object=root-1?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=/etc/kb/pin&max-sessions=16",
		"pkcs11:serial=0123;id=%01%02;type=secret-key",
		"pkcs11:slot-id=3;object=a%3Bb",
		"pkcs11:token=a?pin-value=1")
}

func FuzzParseAWSKMSURI(f *testing.F) {
	fuzzParser(f, ParseAWSKMSURI,
		"awskms:key-id=arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab",
		"awskms:key-id=alias/x;region=us-east-1;endpoint=http://127.0.0.1:1;rate-limit=5;burst=2")
}

func FuzzParseGCPKMSURI(f *testing.F) {
	fuzzParser(f, ParseGCPKMSURI,
		"gcpkms:projects/p/locations/l/keyRings/r/cryptoKeys/k",
		"gcpkms:projects/p/locations/l/keyRings/r/cryptoKeys/k/cryptoKeyVersions/1;endpoint=127.0.0.1:9")
}

func FuzzParseSoftKMSURI(f *testing.F) {
	fuzzParser(f, ParseSoftKMSURI,
		"softkms:root-1;path=/a/b;kek-source=/c",
		"softkms:path=/a;passphrase-source=/b")
}
