package identity

import (
	"strings"
	"testing"
)

// FuzzParse checks the SPIFFE id parser that names every caller: no
// panic; refusals are identity errors; an accepted id has a kind of the
// four, a valid name and a lowercase trust domain, and its canonical form
// (String, and URL as certificates carry it) parses back to the same
// identity.
//
// It does not require the input to be that canonical form: Parse takes
// some aliases of it today (an upper-case scheme, an empty query or
// fragment, percent-encoded path characters), which the fuzzing report
// that added this target describes.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"spiffe://kb.test/client/billing-app",
		"spiffe://kb.test/admin/ops",
		"spiffe://example.org/edge/edge-eu-1",
		"spiffe://kb.test/central/central-1",
		"spiffe://kb.test/client/" + strings.Repeat("a", 128),
		"spiffe://kb.test/client/" + strings.Repeat("a", 129),
		"spiffe://KB.test/client/a",
		"spiffe://kb.test:8443/client/a",
		"spiffe://u@kb.test/client/a",
		"spiffe://kb.test/client/a/b",
		"spiffe://kb.test/client/a%2Fb",
		"spiffe://kb.test/client/%61pp",
		"spiffe://kb.test/client/app#",
		"spiffe://kb.test/robot/a",
		"https://kb.test/client/a",
		"spiffe:///client/a",
		"",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		id, err := Parse(s)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "identity: ") {
				t.Fatalf("Parse(%q) error %q does not name the package", s, err)
			}
			return
		}
		switch id.Kind {
		case Client, Admin, Edge, Central:
		default:
			t.Fatalf("Parse(%q) kind %q", s, id.Kind)
		}
		if !ValidName(id.Name) || !tdRe.MatchString(id.TrustDomain) || strings.ToLower(id.TrustDomain) != id.TrustDomain {
			t.Fatalf("Parse(%q) = %+v: invalid name or trust domain", s, id)
		}
		canon := id.String()
		if u := id.URL().String(); u != canon {
			t.Fatalf("URL() = %q, String() = %q", u, canon)
		}
		again, err := Parse(canon)
		if err != nil || again != id {
			t.Fatalf("canonical form %q of %q parses to %+v, %v; want %+v", canon, s, again, err, id)
		}
	})
}
