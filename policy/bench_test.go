package policy

import "testing"

// BenchmarkAuthorizeKey is the per-request authorization cost: schema
// validation of the request plus Cedar evaluation of the demo policies.
func BenchmarkAuthorizeKey(b *testing.B) {
	s, err := Parse(map[string][]byte{"demo.cedar": []byte(demo)})
	if err != nil {
		b.Fatal(err)
	}
	p := Principal{Kind: KindClient, Name: "billing", TrustDomain: "kb.test", Labels: map[string]string{"app": "billing"}}
	k := Key{Name: "payments", Type: "aes-256-gcm", Mode: "derive", Labels: map[string]string{"app": "billing", "region": "eu"}}
	for b.Loop() {
		if !s.AuthorizeKey(p, Encrypt, k).Allowed {
			b.Fatal("denied")
		}
	}
}
