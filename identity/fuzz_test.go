package identity

import (
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"math/big"
	"strings"
	"testing"
	"time"
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

// FuzzRevocationFiles checks the deny list and CRL parsers, which read
// files an operator (or a half-finished write) provides: no panic; a deny
// list that parses holds only valid ids and lower-case hex serials; a CRL
// accepted is signed by the one root given.
func FuzzRevocationFiles(f *testing.F) {
	ca, err := NewCA("kb.test", time.Hour)
	if err != nil {
		f.Fatal(err)
	}
	der, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{Number: big.NewInt(1), ThisUpdate: time.Now(), NextUpdate: time.Now().Add(time.Hour),
		RevokedCertificateEntries: []x509.RevocationListEntry{{SerialNumber: big.NewInt(42), RevocationTime: time.Now()}}}, ca.Cert, ca.key)
	if err != nil {
		f.Fatal(err)
	}
	for _, s := range []string{"spiffe://kb.test/client/a\n# c\nserial:0a:ff\n", "serial:", "serial:-1", " \n#\n",
		string(pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der})), string(der), "-----BEGIN X509 CRL-----\nAAAA"} {
		f.Add([]byte(s))
	}
	roots := []*x509.Certificate{ca.Cert}
	f.Fuzz(func(t *testing.T, data []byte) {
		l := &revList{denyIDs: map[Identity]bool{}, denySNs: map[string]bool{}}
		if err := parseDeny(data, l); err == nil {
			for id := range l.denyIDs {
				if _, err := Parse(id.String()); err != nil {
					t.Fatalf("deny list holds an invalid id %v", id)
				}
			}
			for sn := range l.denySNs {
				if v, ok := new(big.Int).SetString(sn, 16); !ok || v.Text(16) != sn {
					t.Fatalf("deny list holds serial %q, not canonical hex", sn)
				}
			}
		}
		crls, err := parseCRLs(data, roots)
		if err == nil {
			for _, c := range crls {
				if c.CheckSignatureFrom(ca.Cert) != nil {
					t.Fatal("a CRL not signed by the root was accepted")
				}
			}
		}
	})
}
