package devcluster_test

import (
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/keybroker/keybroker/devcluster"
	"github.com/keybroker/keybroker/identity"
)

// checkDevCerts: every certificate a development cluster issued carries
// what its kind needs and nothing more (identity.Check finds nothing), and
// the admin and app certificates cannot serve: clientAuth only, no hosts.
func checkDevCerts(t *testing.T, dir string) {
	t.Helper()
	for _, name := range []string{"central", "edge-us", "edge-eu", devcluster.AdminName, devcluster.AppName} {
		data, err := os.ReadFile(filepath.Join(dir, "certs", name+".crt"))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := pem.Decode(data)
		if b == nil {
			t.Fatalf("certs/%s.crt holds no PEM", name)
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range identity.Check(c, time.Now()) {
			t.Errorf("certs/%s.crt: %v", name, f)
		}
		id, _ := identity.FromCertificate(c)
		if !id.Kind.Serves() && (slices.Contains(c.ExtKeyUsage, x509.ExtKeyUsageServerAuth) || len(c.DNSNames)+len(c.IPAddresses) > 0) {
			t.Errorf("certs/%s.crt (%s) can serve: usages %v, hosts %v %v", name, id, c.ExtKeyUsage, c.DNSNames, c.IPAddresses)
		}
	}
}
