package config

import (
	"fmt"
	"strings"
	"testing"

	"github.com/keybroker/keybroker/backends"
	"github.com/keybroker/keybroker/broker"
)

// TestRootKeysAgreeWithBroker pins the contract checkRootKeys keeps: a
// default root key is accepted exactly when broker.Roots.Resolve would
// find its backend. If the broker's matching changes, this fails until
// config follows.
func TestRootKeysAgreeWithBroker(t *testing.T) {
	const hsm = "pkcs11:token=kb?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=/etc/keybroker/pin"
	for _, tc := range []struct {
		backends []string
		roots    []string
	}{
		{
			[]string{hsm, "softkms:path=/a.json;kek-source=/k"},
			[]string{
				"pkcs11:token=kb;object=x?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=/etc/keybroker/pin",
				"pkcs11:token=kb;id=%01?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=/etc/keybroker/pin",
				"pkcs11:token=kb;object=x",
				"pkcs11:token=kb;object=x?module-path=/usr/lib/softhsm/libsofthsm2.so",
				"pkcs11:serial=1;object=x?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=/etc/keybroker/pin",
				"softkms:x",
				"softkms:x;path=/a.json;kek-source=/k",
				"softkms:x;path=/a.json",
				"softkms:",
				"awskms:key-id=alias/x;region=eu-west-1",
			},
		},
		{
			[]string{"softkms:path=/a.json", "softkms:path=/b.json"},
			[]string{"softkms:x", "softkms:x;path=/b.json", "softkms:x;path=/c.json"},
		},
		{
			[]string{"awskms:region=eu-west-1", "gcpkms:projects/p/locations/l/keyRings/r"},
			[]string{
				"awskms:key-id=alias/x;region=eu-west-1",
				"awskms:key-id=alias/x;region=us-east-1",
				"awskms:key-id=arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab",
				"gcpkms:projects/p/locations/l/keyRings/r/cryptoKeys/k",
				"gcpkms:projects/p/locations/l/keyRings/r/cryptoKeys/k/cryptoKeyVersions/3",
				"gcpkms:projects/p/locations/l/keyRings/other/cryptoKeys/k",
				"gcpkms:projects/p/locations/l/keyRings/r",
			},
		},
	} {
		named := map[string]backends.Backend{}
		uris := map[string]string{}
		var yaml strings.Builder
		yaml.WriteString(base[:strings.Index(base, "backends:")])
		yaml.WriteString("backends:\n")
		for i, u := range tc.backends {
			name := fmt.Sprintf("b%d", i)
			named[name], uris[name] = nil, u // Resolve never calls the backend
			fmt.Fprintf(&yaml, "  - {name: %s, uri: %q}\n", name, u)
		}
		roots, err := broker.NewRoots(named, uris)
		if err != nil {
			t.Fatal(err)
		}
		accepted := 0
		for _, root := range tc.roots {
			_, _, _, resolveErr := roots.Resolve(root)
			cfg := yaml.String() + fmt.Sprintf("default_root_keys: {derive: %q}\npolicy: {paths: [p]}\n", root)
			_, err := ParseCentral("c.yaml", []byte(cfg), "/")
			if (err == nil) != (resolveErr == nil) {
				t.Errorf("backends %q, root key %q:\nconfig: %v\nbroker: %v", tc.backends, root, err, resolveErr)
			}
			if err == nil {
				accepted++
			}
		}
		if accepted == 0 || accepted == len(tc.roots) {
			t.Errorf("backends %q: %d of %d root keys accepted; the cases should cover both outcomes", tc.backends, accepted, len(tc.roots))
		}
	}
}
