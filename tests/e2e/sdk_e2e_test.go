package e2e

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/client"
	"github.com/keybroker/keybroker/identity"
	"github.com/keybroker/keybroker/tests/framework"
)

// TestSDKEndToEnd runs the Go SDK against real processes — central on a
// SoftHSM2 token, an eu and a us edge: routing follows LookupKey, the
// envelope interoperates with every node, and when the us edge is killed
// (SIGKILL) calls move on with no error.
func TestSDKEndToEnd(t *testing.T) {
	c := framework.NewProcesses(t,
		&framework.EdgeNode{Name: "edge-eu", Region: "eu", Prefetch: true, Staleness: time.Hour},
		&framework.EdgeNode{Name: "edge-us", Region: "us", Prefetch: true, Staleness: time.Hour},
	)
	ctx := t.Context()
	owner := map[string]string{"owner": framework.TrustDomain}
	aes := kbv1.KeyType_KEY_TYPE_AES_256_GCM
	var rev uint64
	for _, k := range []*kbv1.CreateKeyRequest{
		{KeyId: "shared", Type: aes, Mode: kbv1.KeyMode_KEY_MODE_DERIVE, Labels: owner, Placement: "true"},
		{KeyId: "eu-data", Type: aes, Mode: kbv1.KeyMode_KEY_MODE_WRAP, Labels: owner, Placement: `principal.region == "eu"`},
	} {
		m, err := c.Admin.Admin.CreateKey(ctx, k)
		must(t, "CreateKey "+k.KeyId, err)
		rev = max(rev, m.GetRevision())
	}
	c.WaitApplied(t, rev)

	certPEM, keyPEM, err := c.CA.Issue(identity.Identity{TrustDomain: framework.TrustDomain, Kind: identity.Client, Name: "app"}, nil, time.Hour)
	must(t, "Issue", err)
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	must(t, "X509KeyPair", err)
	pool := x509.NewCertPool()
	pool.AddCert(c.CA.Cert)
	tlsCfg := &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: pool, Certificates: []tls.Certificate{cert}}
	us, eu := c.Edges["edge-us"].Proc.Addr, c.Edges["edge-eu"].Proc.Addr
	cl, err := client.New(ctx, client.Config{Addrs: []string{us, c.Central.Addr}, TLS: tlsCfg, Region: "us",
		Backoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond})
	must(t, "client.New", err)
	defer cl.Close()

	// Routing: the LookupKey answer, best first.
	for key, first := range map[string]string{"shared": us, "eu-data": eu} {
		nodes, err := cl.LookupKey(ctx, key, kbv1.Operation_OPERATION_ENCRYPT)
		must(t, "LookupKey", err)
		var want []string
		for _, n := range nodes {
			want = append(want, n.Address)
		}
		route, err := cl.Route(ctx, key, kbv1.Operation_OPERATION_ENCRYPT)
		if err != nil || !slices.Equal(route, want) || route[0] != first {
			t.Errorf("Route(%s) = %v, %v; want the LookupKey answer %v, starting at %s", key, route, err, want, first)
		}
	}

	// The envelope against every node, both ways.
	ectx := map[string]string{"tenant": "7"}
	enc, err := cl.NewEncryptor(client.EncryptorConfig{Key: "eu-data"})
	must(t, "NewEncryptor", err)
	dec := cl.NewDecryptor(client.DecryptorConfig{})
	local, err := enc.Encrypt(ctx, []byte("sealed by the SDK"), ectx)
	must(t, "Encryptor.Encrypt", err)
	for _, addr := range []string{us, eu, c.Central.Addr} {
		node := c.Dial(t, addr, identity.Client, "app")
		d, err := node.KB.Decrypt(ctx, &kbv1.DecryptRequest{Ciphertext: local, EncryptionContext: ectx})
		if err != nil || string(d.GetPlaintext()) != "sealed by the SDK" {
			t.Errorf("Decrypt at %s of an SDK ciphertext: %v", addr, err)
		}
		e, err := node.KB.Encrypt(ctx, &kbv1.EncryptRequest{KeyId: "eu-data", Plaintext: []byte("sealed at " + addr), EncryptionContext: ectx})
		must(t, "Encrypt at "+addr, err)
		if pt, err := dec.Decrypt(ctx, e.GetCiphertext(), ectx); err != nil || string(pt) != "sealed at "+addr {
			t.Errorf("Decryptor of a ciphertext sealed at %s: %q, %v", addr, pt, err)
		}
	}

	// Kill the us edge under load: no call fails. Workers encrypt from
	// before the kill until 200 calls have succeeded after it.
	before := cl.Calls()
	var (
		wg        sync.WaitGroup
		mu        sync.Mutex
		failures  []error
		calls     int
		afterKill = -1 // calls made since the kill finished; -1 before it
		warm      = make(chan struct{})
		stop      = make(chan struct{})
	)
	for w := range 8 {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				_, err := cl.Encrypt(ctx, "shared", fmt.Appendf(nil, "%d/%d", w, i), nil)
				mu.Lock()
				if err != nil {
					failures = append(failures, err)
				}
				if calls++; calls == 100 {
					close(warm)
				}
				if afterKill >= 0 {
					if afterKill++; afterKill == 200 {
						close(stop)
					}
				}
				mu.Unlock()
			}
		})
	}
	<-warm
	c.Edges["edge-us"].Proc.Kill()
	mu.Lock()
	afterKill = 0
	mu.Unlock()
	wg.Wait()
	if len(failures) > 0 {
		t.Fatalf("%d of %d encrypts failed when the us edge was killed; first: %v", len(failures), calls, failures[0])
	}
	after := cl.Calls()
	if moved := after[eu] - before[eu] + after[c.Central.Addr] - before[c.Central.Addr]; moved == 0 {
		t.Errorf("no encrypt moved to edge-eu or central after edge-us was killed: %v → %v", before, after)
	}
	if _, err := cl.Encrypt(ctx, "shared", []byte("after"), nil); err != nil {
		t.Errorf("Encrypt after the fail-over: %v", err)
	}
}
