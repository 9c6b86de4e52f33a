package backends

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

func TestParsePKCS11URI(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    PKCS11URI
		key     string
		backend string
	}{
		{
			in:      "pkcs11:token=keybroker;object=root-1?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=/etc/kb/pin&max-sessions=16",
			want:    PKCS11URI{Token: "keybroker", Object: "root-1", SlotID: -1, ModulePath: "/usr/lib/softhsm/libsofthsm2.so", PinSource: "/etc/kb/pin", MaxSessions: 16},
			key:     "root-1",
			backend: "pkcs11:token=keybroker?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=/etc/kb/pin&max-sessions=16",
		},
		{
			in:      "pkcs11:serial=0123abcd;id=%01%02;type=secret-key",
			want:    PKCS11URI{Serial: "0123abcd", ID: []byte{1, 2}, Type: "secret-key", SlotID: -1},
			key:     "id=%01%02",
			backend: "pkcs11:serial=0123abcd",
		},
		{
			in:      "pkcs11:token=My%20Token;object=a%3Bb?pin-source=file:/run/pin",
			want:    PKCS11URI{Token: "My Token", Object: "a;b", SlotID: -1, PinSource: "/run/pin"},
			key:     "a;b",
			backend: "pkcs11:token=My%20Token?pin-source=/run/pin",
		},
		{
			in:      "pkcs11:slot-id=3",
			want:    PKCS11URI{SlotID: 3},
			backend: "pkcs11:slot-id=3",
		},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParsePKCS11URI(tc.in)
			if err != nil {
				t.Fatalf("ParsePKCS11URI(%q) error: %v", tc.in, err)
			}
			if got.Token != tc.want.Token || got.Serial != tc.want.Serial || got.Object != tc.want.Object ||
				!bytes.Equal(got.ID, tc.want.ID) || got.Type != tc.want.Type || got.SlotID != tc.want.SlotID ||
				got.ModulePath != tc.want.ModulePath || got.PinSource != tc.want.PinSource || got.MaxSessions != tc.want.MaxSessions {
				t.Errorf("ParsePKCS11URI(%q) = %+v, want %+v", tc.in, *got, tc.want)
			}
			if got.Key() != tc.key {
				t.Errorf("Key() = %q, want %q", got.Key(), tc.key)
			}
			if got.BackendURI() != tc.backend {
				t.Errorf("BackendURI() = %q, want %q", got.BackendURI(), tc.backend)
			}
			again, err := ParsePKCS11URI(got.String())
			if err != nil || again.String() != got.String() {
				t.Errorf("String() %q does not round-trip: %v", got.String(), err)
			}
		})
	}
}

func TestParsePKCS11URIErrors(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"pkcs11:object=x", "no token selected"},
		{"pkcs11:token=a;token=b", "repeated"},
		{"pkcs11:token=a;color=blue", "unknown path attribute"},
		{"pkcs11:token=a?pin-value=1234", "pin-value is refused"},
		{"pkcs11:token=a;pin-source=/x", "query attribute"},
		{"pkcs11:token=a?module-path=relative.so", "not absolute"},
		{"pkcs11:token=a?pin-source=pin.txt", "not an absolute"},
		{"pkcs11:token=a?max-sessions=0", "max-sessions"},
		{"pkcs11:token=a?max-sessions=lots", "max-sessions"},
		{"pkcs11:token=a?x-vendor=1", "unknown query attribute"},
		{"pkcs11:token=a;type=secret", "type"},
		{"pkcs11:token=%zz", "percent-encoding"},
		{"pkcs11:token", "not name=value"},
		{"pkcs11:token=a;", "not name=value"},
		{"pkcs11:token=a;slot-id=-1", "slot-id"},
		{"pkcs11:token=a;library-version=1", "not supported"},
		{"PKCS11:token=a", "scheme is not pkcs11"},
		{"pkcs11:token=a%0a", "control character"},
		{"pkcs11:token=a#frag", "unexpected"},
	} {
		t.Run(tc.in, func(t *testing.T) {
			_, err := ParsePKCS11URI(tc.in)
			if err == nil || !strings.Contains(err.Error(), tc.want) || !errors.Is(err, ErrInvalidArgument) {
				t.Errorf("ParsePKCS11URI(%q) error = %v, want invalid argument containing %q", tc.in, err, tc.want)
			}
		})
	}
}

func TestPKCS11KeyName(t *testing.T) {
	label, id, err := PKCS11KeyName("root-1")
	if label != "root-1" || id != nil || err != nil {
		t.Errorf("PKCS11KeyName(root-1) = %q, %x, %v", label, id, err)
	}
	label, id, err = PKCS11KeyName("id=%01%ff")
	if label != "" || !bytes.Equal(id, []byte{1, 0xff}) || err != nil {
		t.Errorf("PKCS11KeyName(id=%%01%%ff) = %q, %x, %v", label, id, err)
	}
	if _, _, err := PKCS11KeyName("id=%zz"); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("PKCS11KeyName(id=%%zz) err = %v", err)
	}
}

func TestParseAWSKMSURI(t *testing.T) {
	for _, tc := range []struct {
		in                        string
		keyID, region, backend, s string
		rate                      float64
		burst                     int
	}{
		{
			in:      "awskms:key-id=arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab",
			keyID:   "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab",
			region:  "eu-west-1",
			backend: "awskms:region=eu-west-1",
		},
		{
			in:      "awskms:key-id=alias/keybroker-root;region=us-east-2;endpoint=http://127.0.0.1:4566;rate-limit=100.5;burst=10",
			keyID:   "alias/keybroker-root",
			region:  "us-east-2",
			backend: "awskms:region=us-east-2;endpoint=http://127.0.0.1:4566;rate-limit=100.5;burst=10",
			rate:    100.5, burst: 10,
		},
		{
			in:      "awskms:region=ap-southeast-1",
			region:  "ap-southeast-1",
			backend: "awskms:region=ap-southeast-1",
		},
	} {
		t.Run(tc.in, func(t *testing.T) {
			u, err := ParseAWSKMSURI(tc.in)
			if err != nil {
				t.Fatalf("error: %v", err)
			}
			if u.KeyID != tc.keyID || u.Region != tc.region || u.RateLimit != tc.rate || u.Burst != tc.burst || u.Key() != tc.keyID {
				t.Errorf("ParseAWSKMSURI(%q) = %+v", tc.in, *u)
			}
			if u.BackendURI() != tc.backend {
				t.Errorf("BackendURI() = %q, want %q", u.BackendURI(), tc.backend)
			}
			if again, err := ParseAWSKMSURI(u.String()); err != nil || *again != *u {
				t.Errorf("String() %q does not round-trip: %+v, %v", u.String(), again, err)
			}
		})
	}
	for _, tc := range []struct{ in, want string }{
		{"awskms:key-id=1234abcd-12ab-34cd-56ef-1234567890ab", "no region"},
		{"awskms:key-id=not a key;region=us-east-1", "not a key id"},
		{"awskms:key-id=arn:aws:kms:eu-west-1:111122223333:key/abc;region=us-east-1", "contradicts"},
		{"awskms:region=Europe", "not an AWS region"},
		{"awskms:region=us-east-1;endpoint=ftp://x", "not an http"},
		{"awskms:region=us-east-1;endpoint=http://u:p@host", "not an http"},
		{"awskms:region=us-east-1;rate-limit=-1", "rate-limit"},
		{"awskms:region=us-east-1;burst=0", "burst"},
		{"awskms:region=us-east-1;profile=x", "unknown attribute"},
		{"awskms:region=us-east-1;region=us-east-1", "repeated"},
	} {
		t.Run(tc.in, func(t *testing.T) {
			_, err := ParseAWSKMSURI(tc.in)
			if err == nil || !strings.Contains(err.Error(), tc.want) || !errors.Is(err, ErrInvalidArgument) {
				t.Errorf("ParseAWSKMSURI(%q) error = %v, want invalid argument containing %q", tc.in, err, tc.want)
			}
		})
	}
}

func TestParseGCPKMSURI(t *testing.T) {
	const ring = "projects/my-proj/locations/europe-west1/keyRings/kb"
	for _, tc := range []struct{ in, res, key, backend, kind string }{
		{"gcpkms:" + ring + "/cryptoKeys/root", ring + "/cryptoKeys/root", ring + "/cryptoKeys/root", "gcpkms:" + ring, "cryptoKey"},
		{"gcpkms:" + ring + "/cryptoKeys/mac/cryptoKeyVersions/3;endpoint=127.0.0.1:9000", ring + "/cryptoKeys/mac/cryptoKeyVersions/3", ring + "/cryptoKeys/mac/cryptoKeyVersions/3", "gcpkms:" + ring + ";endpoint=127.0.0.1:9000", "cryptoKeyVersion"},
		{"gcpkms:" + ring, ring, "", "gcpkms:" + ring, "keyRing"},
	} {
		t.Run(tc.in, func(t *testing.T) {
			u, err := ParseGCPKMSURI(tc.in)
			if err != nil {
				t.Fatalf("error: %v", err)
			}
			if u.Resource != tc.res || u.Key() != tc.key || u.BackendURI() != tc.backend || GCPResourceKind(u.Resource) != tc.kind {
				t.Errorf("ParseGCPKMSURI(%q) = %+v key %q backend %q", tc.in, *u, u.Key(), u.BackendURI())
			}
			if again, err := ParseGCPKMSURI(u.String()); err != nil || *again != *u {
				t.Errorf("String() %q does not round-trip", u.String())
			}
		})
	}
	for _, tc := range []struct{ in, want string }{
		{"gcpkms:projects/p", "not a key ring"},
		{"gcpkms:projects/p/locations/l/keyRings/r/cryptoKeys/k/extra", "not a key ring"},
		{"gcpkms:" + ring + ";endpoint=nohost", "not host:port"},
		{"gcpkms:" + ring + ";endpoint=h:99999", "not host:port"},
		{"gcpkms:" + ring + ";credentials=/x", "unknown attribute"},
		{"gcpkms:", "not a key ring"},
	} {
		t.Run(tc.in, func(t *testing.T) {
			_, err := ParseGCPKMSURI(tc.in)
			if err == nil || !strings.Contains(err.Error(), tc.want) || !errors.Is(err, ErrInvalidArgument) {
				t.Errorf("ParseGCPKMSURI(%q) error = %v, want invalid argument containing %q", tc.in, err, tc.want)
			}
		})
	}
}

func TestParseSoftKMSURI(t *testing.T) {
	u, err := ParseSoftKMSURI("softkms:root-1;path=/var/lib/kb/ks.json;kek-source=/etc/kb/kek")
	if err != nil {
		t.Fatal(err)
	}
	want := SoftKMSURI{Name: "root-1", Path: "/var/lib/kb/ks.json", KEKSource: "/etc/kb/kek"}
	if *u != want {
		t.Errorf("got %+v, want %+v", *u, want)
	}
	if u.BackendURI() != "softkms:path=/var/lib/kb/ks.json;kek-source=/etc/kb/kek" || u.Key() != "root-1" {
		t.Errorf("BackendURI() = %q, Key() = %q", u.BackendURI(), u.Key())
	}
	if u, err := ParseSoftKMSURI("softkms:root-1"); err != nil || u.Name != "root-1" || u.Path != "" {
		t.Errorf("ParseSoftKMSURI(softkms:root-1) = %+v, %v", u, err)
	}
	if u, err := ParseSoftKMSURI("softkms:path=/a;passphrase-source=/b"); err != nil || u.Name != "" || u.PassphraseSource != "/b" {
		t.Errorf("backend-only URI = %+v, %v", u, err)
	}
	for _, tc := range []struct{ in, want string }{
		{"softkms:-bad", "key name"},
		{"softkms:root;path=rel", "not an absolute path"},
		{"softkms:root;kek-source=/a;passphrase-source=/b", "not both"},
		{"softkms:root;kek=/a", "unknown attribute"},
		{"softkms:a b", "key name"},
	} {
		_, err := ParseSoftKMSURI(tc.in)
		if err == nil || !strings.Contains(err.Error(), tc.want) || !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("ParseSoftKMSURI(%q) error = %v, want invalid argument containing %q", tc.in, err, tc.want)
		}
	}
}

func TestParseKeyURI(t *testing.T) {
	for _, in := range []string{
		"pkcs11:token=t;object=o",
		"awskms:key-id=alias/x;region=us-east-1",
		"gcpkms:projects/p/locations/l/keyRings/r/cryptoKeys/k",
		"softkms:root",
	} {
		u, err := ParseKeyURI(in)
		if err != nil {
			t.Errorf("ParseKeyURI(%q) error: %v", in, err)
			continue
		}
		if !strings.HasPrefix(in, u.Scheme()+":") || u.Key() == "" {
			t.Errorf("ParseKeyURI(%q) scheme %q key %q", in, u.Scheme(), u.Key())
		}
	}
	for _, in := range []string{"", "nothing", "vault:transit/x", "Softkms:root"} {
		if _, err := ParseKeyURI(in); !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("ParseKeyURI(%q) err = %v, want invalid argument", in, err)
		}
	}
	if _, err := ParseKeyURI("softkms:" + strings.Repeat("a", maxURI)); err == nil {
		t.Error("oversized URI accepted")
	}
}

func TestHolds(t *testing.T) {
	const hsm = "pkcs11:token=kb?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=/etc/kb/pin"
	for _, tc := range []struct {
		backend, key string
		want         bool
	}{
		{hsm, "pkcs11:token=kb;object=root", true},
		{hsm, "pkcs11:token=kb;object=root?module-path=/usr/lib/softhsm/libsofthsm2.so", true},
		{hsm, "pkcs11:token=kb;object=root?module-path=/opt/other.so", false},
		{hsm, "pkcs11:token=other;object=root", false},
		{hsm, "pkcs11:serial=1;object=root", false},
		{"softkms:path=/a.json;kek-source=/k", "softkms:root", true},
		{"softkms:path=/a.json;kek-source=/k", "softkms:root;path=/a.json", true},
		{"softkms:path=/a.json;kek-source=/k", "softkms:root;path=/b.json", false},
		{"awskms:region=eu-west-1;endpoint=http://127.0.0.1:1", "awskms:key-id=arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab", true},
		{"awskms:region=eu-west-1", "awskms:key-id=alias/x;region=us-east-1", false},
		{"gcpkms:projects/p/locations/l/keyRings/r", "gcpkms:projects/p/locations/l/keyRings/r/cryptoKeys/k", true},
		{"gcpkms:projects/p/locations/l/keyRings/r", "gcpkms:projects/p/locations/l/keyRings/s/cryptoKeys/k", false},
		{hsm, "softkms:root", false},
	} {
		b, err1 := ParseKeyURI(tc.backend)
		k, err2 := ParseKeyURI(tc.key)
		if err1 != nil || err2 != nil {
			t.Fatalf("parse: %v, %v", err1, err2)
		}
		if got := Holds(b, k); got != tc.want {
			t.Errorf("Holds(%q, %q) = %v, want %v", tc.backend, tc.key, got, tc.want)
		}
	}
}
