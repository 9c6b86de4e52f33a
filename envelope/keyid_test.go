package envelope

import (
	"errors"
	"regexp"
	"strings"
	"testing"
)

// keyIDRule is the rule the key model has always made keys under (it was
// managed's own ValidKeyID): every stored key passes it, so ValidKeyID may
// be no stricter, and a header naming an id outside it names no key.
var keyIDRule = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$`)

func TestValidKeyID(t *testing.T) {
	for _, tc := range []struct {
		id   string
		want bool
	}{
		{"payments", true},
		{"a", true},
		{"7", true},
		{"team/payments:v1.key_2-x", true},
		{strings.Repeat("k", MaxKeyID), true},
		{"", false},
		{strings.Repeat("k", MaxKeyID+1), false},
		// The envelope used to take these; no key could have them.
		{"-payments", false},
		{".payments", false},
		{"_payments", false},
		{":payments", false},
		{"/payments", false},
		{"pay ments", false},
		{"pay\x00ments", false},
		{"paymënts", false},
	} {
		if got := ValidKeyID(tc.id); got != tc.want {
			t.Errorf("ValidKeyID(%q) = %v, want %v", tc.id, got, tc.want)
		}
	}
}

// TestParseHeaderRefusesKeyIDNoKeyHas: a header naming an id no key could
// have is malformed, as the API would refuse the id anyway.
func TestParseHeaderRefusesKeyIDNoKeyHas(t *testing.T) {
	good := append(appendHeader(nil, "payments", 1, make([]byte, WrappedDEKLen), make([]byte, NonceSize)), make([]byte, TagSize)...)
	if _, _, err := ParseHeader(good); err != nil {
		t.Fatalf("ParseHeader(good header) = %v", err)
	}
	bad := append(appendHeader(nil, "-payments", 1, make([]byte, WrappedDEKLen), make([]byte, NonceSize)), make([]byte, TagSize)...)
	if _, _, err := ParseHeader(bad); !errors.Is(err, ErrMalformed) {
		t.Errorf("ParseHeader(header naming -payments) = %v, want ErrMalformed", err)
	}
}

func FuzzValidKeyID(f *testing.F) {
	for _, s := range []string{"payments", "-x", "a/b:c.d_e-f", "", strings.Repeat("k", MaxKeyID+1), "é"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, id string) {
		if got, want := ValidKeyID(id), keyIDRule.MatchString(id); got != want {
			t.Fatalf("ValidKeyID(%q) = %v, the key model's rule says %v", id, got, want)
		}
	})
}
