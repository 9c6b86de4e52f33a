package identity

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"
)

// logBuf is a concurrency-safe log sink.
type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func (l *logBuf) logger() *slog.Logger { return slog.New(slog.NewTextHandler(l, nil)) }

// leafSpec describes a test certificate.
type leafSpec struct {
	id        Identity
	eku       []x509.ExtKeyUsage // nil: both
	notBefore time.Time          // zero: a minute ago
	notAfter  time.Time          // zero: in an hour
	hosts     []string
}

// issueSpec issues a certificate of spec from ca, as PEM.
func issueSpec(t *testing.T, ca *CA, s leafSpec) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if s.eku == nil {
		s.eku = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth}
	}
	if s.notBefore.IsZero() {
		s.notBefore = time.Now().Add(-time.Minute)
	}
	if s.notAfter.IsZero() {
		s.notAfter = time.Now().Add(time.Hour)
	}
	sn, err := serial()
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: sn, Subject: pkix.Name{CommonName: s.id.Name}, NotBefore: s.notBefore, NotAfter: s.notAfter,
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: s.eku}
	if s.id != (Identity{}) {
		tmpl.URIs = append(tmpl.URIs, s.id.URL())
	}
	for _, h := range s.hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
}

// idFiles is one identity's files in its own directory.
type idFiles struct {
	TLSFiles
	t *testing.T
}

func newIDFiles(t *testing.T, ca *CA, s leafSpec) *idFiles {
	t.Helper()
	dir := t.TempDir()
	f := &idFiles{TLSFiles{CA: filepath.Join(dir, "ca.pem"), Cert: filepath.Join(dir, "cert.pem"), Key: filepath.Join(dir, "key.pem")}, t}
	f.writeCA(ca)
	f.rotate(ca, s)
	return f
}

func (f *idFiles) writeCA(cas ...*CA) {
	var b []byte
	for _, ca := range cas {
		b = append(b, ca.CertPEM()...)
	}
	writeAtomic(f.t, f.CA, b)
}

// rotate writes a new certificate and key for s and returns its serial.
func (f *idFiles) rotate(ca *CA, s leafSpec) string {
	c, k := issueSpec(f.t, ca, s)
	writeAtomic(f.t, f.Key, k)
	writeAtomic(f.t, f.Cert, c)
	b, _ := pem.Decode(c)
	cert, _ := x509.ParseCertificate(b.Bytes)
	return cert.SerialNumber.Text(16)
}

func writeAtomic(t *testing.T, path string, data []byte) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func newLive(t *testing.T, f *idFiles, rev RevocationFiles, log *slog.Logger) *Live {
	t.Helper()
	src, err := NewFileSource(f.TLSFiles, FileOptions{ReloadInterval: -1, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	r, err := NewRevocation(rev, func() []*x509.Certificate { return src.Current().Roots }, FileOptions{ReloadInterval: -1, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	l := NewLive(src, r, log)
	t.Cleanup(func() { l.Close() })
	return l
}

// healthServer serves grpc.health.v1 with l's server credentials.
func healthServer(t *testing.T, l *Live) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer(grpc.Creds(l.ServerCredentials()))
	healthpb.RegisterHealthServer(s, health.NewServer())
	go s.Serve(lis)
	t.Cleanup(s.Stop)
	return lis.Addr().String()
}

func dial(t *testing.T, addr string, creds credentials.TransportCredentials) *grpc.ClientConn {
	t.Helper()
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// check calls Health.Check on cc and returns the serial of the server
// certificate the connection saw.
func check(ctx context.Context, cc *grpc.ClientConn) (string, error) {
	var p peer.Peer
	_, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{}, grpc.Peer(&p))
	if err != nil {
		return "", err
	}
	ti := p.AuthInfo.(credentials.TLSInfo)
	return ti.State.PeerCertificates[0].SerialNumber.Text(16), nil
}

var (
	centralID = Identity{TrustDomain: "kb.test", Kind: Central, Name: "c1"}
	clientID  = Identity{TrustDomain: "kb.test", Kind: Client, Name: "app"}
)

func newTestCA(t *testing.T, td string) *CA {
	t.Helper()
	ca, err := NewCA(td, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

// eventually waits (generously) for cond.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestLiveReloadKeepsHealthyConnections: a certificate rotated on disk is
// presented on new handshakes after Reload, a new CA added to the bundle
// is trusted, and the connection open before keeps working.
func TestLiveReloadKeepsHealthyConnections(t *testing.T) {
	ca := newTestCA(t, "kb.test")
	srvFiles := newIDFiles(t, ca, leafSpec{id: centralID})
	var slog logBuf
	srv := newLive(t, srvFiles, RevocationFiles{}, slog.logger())
	addr := healthServer(t, srv)
	cli := newLive(t, newIDFiles(t, ca, leafSpec{id: clientID}), RevocationFiles{}, nil)

	old := dial(t, addr, cli.ClientCredentials(AcceptKinds(Central), ""))
	first, err := check(t.Context(), old)
	if err != nil {
		t.Fatal(err)
	}
	ca2 := newTestCA(t, "kb.test")
	srvFiles.writeCA(ca, ca2)
	second := srvFiles.rotate(ca, leafSpec{id: centralID})
	if err := srv.Reload(); err != nil {
		t.Fatal(err)
	}
	if got, err := check(t.Context(), old); err != nil || got != first {
		t.Errorf("open connection after reload: serial %s, %v; want %s, no error (a healthy connection is never dropped)", got, err, first)
	}
	if got, err := check(t.Context(), dial(t, addr, cli.ClientCredentials(AcceptKinds(Central), ""))); err != nil || got != second {
		t.Errorf("new connection after reload: serial %s, %v; want the rotated %s", got, err, second)
	}
	// A client of the CA added to the bundle is trusted now (it trusts
	// both CAs, the server's certificate being of the first).
	f2 := newIDFiles(t, ca2, leafSpec{id: clientID})
	f2.writeCA(ca, ca2)
	cli3 := newLive(t, f2, RevocationFiles{}, nil)
	if _, err := check(t.Context(), dial(t, addr, cli3.ClientCredentials(AcceptKinds(Central), ""))); err != nil {
		t.Errorf("a client of the CA added to the bundle: %v", err)
	}
}

// TestFileSourceHalfWritten: a certificate that does not match the key, or
// a file cut short, keeps the identity in force; each failure is logged
// once; the pair read whole is taken.
func TestFileSourceHalfWritten(t *testing.T) {
	ca := newTestCA(t, "kb.test")
	f := newIDFiles(t, ca, leafSpec{id: clientID})
	var log logBuf
	src, err := NewFileSource(f.TLSFiles, FileOptions{ReloadInterval: -1, Logger: log.logger()})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	before := src.Current()
	newCert, newKey := issueSpec(t, ca, leafSpec{id: clientID})
	writeAtomic(t, f.Cert, newCert) // the key is still the old one
	if err := src.Reload(); err == nil {
		t.Fatal("Reload of a mismatched pair succeeded")
	}
	if strings.Contains(log.String(), "could not be reloaded") {
		t.Errorf("a failure seen once (a rotation caught half-way) was logged:\n%s", log.String())
	}
	for range 3 {
		if err := src.Reload(); err == nil || !strings.Contains(err.Error(), "private key does not match") {
			t.Fatalf("Reload of a mismatched pair = %v, want a mismatch error", err)
		}
	}
	if src.Current() != before {
		t.Error("a mismatched pair replaced the identity")
	}
	if n := strings.Count(log.String(), "could not be reloaded"); n != 1 {
		t.Errorf("the same failure was logged %d times, want once:\n%s", n, log.String())
	}
	writeAtomic(t, f.Key, newKey[:len(newKey)/2]) // cut short
	if err := src.Reload(); err == nil || src.Current() != before {
		t.Errorf("Reload of a half-written key = %v, identity changed %v", err, src.Current() != before)
	}
	writeAtomic(t, f.Key, newKey)
	if err := src.Reload(); err != nil || src.Current() == before {
		t.Fatalf("Reload of the whole pair = %v, identity changed %v", err, src.Current() != before)
	}
	select {
	case <-src.Changes():
	default:
		t.Error("Changes did not signal the new identity")
	}
	if _, err := NewFileSource(TLSFiles{CA: f.CA, Cert: f.Cert, Key: f.CA}, FileOptions{}); err == nil {
		t.Error("NewFileSource with a CA as key succeeded; the first read must fail clearly")
	}
}

// TestFileSourcePolls: a change on disk is taken without Reload, a
// Kubernetes-style symlink swap included.
func TestFileSourcePolls(t *testing.T) {
	ca := newTestCA(t, "kb.test")
	dir := t.TempDir()
	// dir/..v1/{ca,cert,key}.pem, dir/..data -> ..v1, dir/x.pem -> ..data/x.pem
	write := func(version string, cert, key []byte) {
		vd := filepath.Join(dir, version)
		if err := os.Mkdir(vd, 0o700); err != nil {
			t.Fatal(err)
		}
		for name, b := range map[string][]byte{"ca.pem": ca.CertPEM(), "cert.pem": cert, "key.pem": key} {
			if err := os.WriteFile(filepath.Join(vd, name), b, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		tmp := filepath.Join(dir, "..data_tmp")
		if err := os.Symlink(version, tmp); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, "..data")); err != nil {
			t.Fatal(err)
		}
	}
	c1, k1 := issueSpec(t, ca, leafSpec{id: clientID})
	write("..v1", c1, k1)
	files := TLSFiles{}
	for name, p := range map[string]*string{"ca.pem": &files.CA, "cert.pem": &files.Cert, "key.pem": &files.Key} {
		*p = filepath.Join(dir, name)
		if err := os.Symlink(filepath.Join("..data", name), *p); err != nil {
			t.Fatal(err)
		}
	}
	src, err := NewFileSource(files, FileOptions{ReloadInterval: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	before := src.Current()
	c2, k2 := issueSpec(t, ca, leafSpec{id: clientID})
	write("..v2", c2, k2)
	select {
	case <-src.Changes():
	case <-time.After(20 * time.Second):
		t.Fatal("the symlink swap was not noticed")
	}
	if src.Current() == before || !bytes.Equal(src.Current().Certificate.Certificate[0], pemDER(c2)) {
		t.Error("the identity is not the swapped-in certificate")
	}
}

func pemDER(p []byte) []byte {
	b, _ := pem.Decode(p)
	return b.Bytes
}

// TestLiveClosesExpiredConnection: a connection authenticated with a
// certificate that then expires is closed, and said why, on the server.
func TestLiveClosesExpiredConnection(t *testing.T) {
	ca := newTestCA(t, "kb.test")
	var log logBuf
	srv := newLive(t, newIDFiles(t, ca, leafSpec{id: centralID}), RevocationFiles{}, log.logger())
	addr := healthServer(t, srv)
	cli := newLive(t, newIDFiles(t, ca, leafSpec{id: clientID, notAfter: time.Now().Add(2 * time.Second)}), RevocationFiles{}, nil)
	cc := dial(t, addr, cli.ClientCredentials(AcceptKinds(Central), ""))
	if _, err := check(t.Context(), cc); err != nil {
		t.Fatal(err)
	}
	if srv.Conns() != 1 {
		t.Fatalf("server tracks %d connections, want 1", srv.Conns())
	}
	eventually(t, "the expired connection to be closed", func() bool { return srv.Conns() == 0 })
	if !strings.Contains(log.String(), "the client certificate expired at") {
		t.Errorf("server log does not say the certificate expired:\n%s", log.String())
	}
	// And a new handshake with it is refused, saying why.
	eventually(t, "a call refused naming the expiry", func() bool {
		_, err := check(t.Context(), cc)
		return err != nil && strings.Contains(err.Error(), "expired")
	})
}

// TestRevocationClosesAndRefuses: a deny list entry or a CRL revokes a
// live connection and refuses new ones; the refusal reaches the client's
// error.
func TestRevocationClosesAndRefuses(t *testing.T) {
	ca := newTestCA(t, "kb.test")
	cliFiles := newIDFiles(t, ca, leafSpec{id: clientID})
	cliSerial := mustMaterial(t, cliFiles).Certificate.Leaf.SerialNumber
	for _, tc := range []struct {
		name  string
		write func(rf RevocationFiles)
		want  string
	}{
		{"deny id", func(rf RevocationFiles) { writeAtomic(t, rf.Deny, []byte("# revoked\n"+clientID.String()+"\n")) }, "is on the deny list"},
		{"deny serial", func(rf RevocationFiles) {
			writeAtomic(t, rf.Deny, []byte("serial:"+cliSerial.Text(16)+"  # lost laptop\n"))
		}, "is on the deny list"},
		{"crl", func(rf RevocationFiles) { writeAtomic(t, rf.CRL, crlPEM(t, ca, cliSerial)) }, "by the CRL of"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			rf := RevocationFiles{CRL: filepath.Join(dir, "crl.pem"), Deny: filepath.Join(dir, "deny")}
			writeAtomic(t, rf.CRL, crlPEM(t, ca))
			writeAtomic(t, rf.Deny, []byte("# nobody\n"))
			var log logBuf
			srv := newLive(t, newIDFiles(t, ca, leafSpec{id: centralID}), rf, log.logger())
			addr := healthServer(t, srv)
			var clog logBuf
			cli := newLive(t, cliFiles, RevocationFiles{}, clog.logger())
			cc := dial(t, addr, cli.ClientCredentials(AcceptKinds(Central), ""))
			if _, err := check(t.Context(), cc); err != nil {
				t.Fatal(err)
			}
			tc.write(rf)
			if err := srv.Reload(); err != nil {
				t.Fatal(err)
			}
			eventually(t, "the revoked connection to be closed", func() bool { return srv.Conns() == 0 })
			// The first call may still find the closed connection (broken
			// pipe); the next handshakes are refused, saying why.
			var err error
			eventually(t, "a call refused with the reason", func() bool {
				_, err = check(t.Context(), cc)
				return err != nil && strings.Contains(err.Error(), "refused our certificate")
			})
			if !strings.Contains(log.String(), tc.want) {
				t.Errorf("server log does not say %q:\n%s", tc.want, log.String())
			}
			if !strings.Contains(clog.String(), "refused our certificate") {
				t.Errorf("client log does not say the server refused us:\n%s", clog.String())
			}
		})
	}
}

func mustMaterial(t *testing.T, f *idFiles) *Material {
	t.Helper()
	m, err := f.Material()
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// crlPEM is a CRL of ca revoking serials.
func crlPEM(t *testing.T, ca *CA, serials ...*big.Int) []byte {
	t.Helper()
	tmpl := &x509.RevocationList{Number: big.NewInt(time.Now().UnixNano()), ThisUpdate: time.Now().Add(-time.Minute), NextUpdate: time.Now().Add(time.Hour)}
	for _, s := range serials {
		tmpl.RevokedCertificateEntries = append(tmpl.RevokedCertificateEntries, x509.RevocationListEntry{SerialNumber: s, RevocationTime: time.Now()})
	}
	der, err := x509.CreateRevocationList(rand.Reader, tmpl, ca.Cert, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der})
}

// TestCRLForeignRefused: a CRL signed by another CA is refused, at start
// and on reload (the lists in force stay); a stale CRL is honoured and
// said stale.
func TestCRLForeignRefused(t *testing.T) {
	ca, other := newTestCA(t, "kb.test"), newTestCA(t, "kb.test")
	roots := func() []*x509.Certificate { return []*x509.Certificate{ca.Cert} }
	dir := t.TempDir()
	crl := filepath.Join(dir, "crl.pem")
	victim := mustMaterial(t, newIDFiles(t, ca, leafSpec{id: clientID})).Certificate.Leaf
	writeAtomic(t, crl, crlPEM(t, other, victim.SerialNumber))
	if _, err := NewRevocation(RevocationFiles{CRL: crl}, roots, FileOptions{ReloadInterval: -1}); err == nil || !strings.Contains(err.Error(), "not signed by any CA of tls.ca") {
		t.Fatalf("NewRevocation with a foreign CRL = %v, want a refusal", err)
	}
	writeAtomic(t, crl, crlPEM(t, ca, victim.SerialNumber))
	var log logBuf
	r, err := NewRevocation(RevocationFiles{CRL: crl}, roots, FileOptions{ReloadInterval: -1, Logger: log.logger()})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	writeAtomic(t, crl, crlPEM(t, other)) // a forged empty list, un-revoking the victim
	if err := r.Reload(); err == nil {
		t.Error("Reload of a foreign CRL succeeded")
	}
	if _, ok := r.Revoked([]*x509.Certificate{victim}); !ok {
		t.Error("a foreign CRL un-revoked a certificate")
	}
	// Stale: still honoured, and said so.
	r.now = func() time.Time { return time.Now().Add(2 * time.Hour) }
	writeAtomic(t, crl, crlPEM(t, ca, victim.SerialNumber))
	if err := r.Reload(); err != nil {
		t.Fatal(err)
	}
	if _, ok := r.Revoked([]*x509.Certificate{victim}); !ok {
		t.Error("a stale CRL is not honoured")
	}
	if !strings.Contains(log.String(), "past its next update") {
		t.Errorf("a stale CRL was not reported:\n%s", log.String())
	}
}

// TestDenyListParse: bad lines are refused with their number.
func TestDenyListParse(t *testing.T) {
	for _, bad := range []string{"serial:xyz", "serial:", "spiffe://kb.test/robot/a", "client/a", "serial:-1"} {
		l := &revList{denyIDs: map[Identity]bool{}, denySNs: map[string]bool{}}
		if err := parseDeny([]byte("# ok\n"+bad+"\n"), l); err == nil || !strings.Contains(err.Error(), "line 2") {
			t.Errorf("parseDeny(%q) = %v, want an error naming line 2", bad, err)
		}
	}
	l := &revList{denyIDs: map[Identity]bool{}, denySNs: map[string]bool{}}
	if err := parseDeny([]byte("serial:0A:ff  # x\n spiffe://kb.test/admin/bob \n\n"), l); err != nil {
		t.Fatal(err)
	}
	if !l.denySNs["aff"] || !l.denyIDs[Identity{TrustDomain: "kb.test", Kind: Admin, Name: "bob"}] {
		t.Errorf("parsed %v %v", l.denySNs, l.denyIDs)
	}
}

// TestClientChecksServer: attacks on the client side that must fail — a
// server presenting a client or edge certificate where central is
// wanted, one without serverAuth, one of another trust domain or CA —
// and a certificate with only a URI SAN dialled by IP, which must work.
func TestClientChecksServer(t *testing.T) {
	ca := newTestCA(t, "kb.test")
	cli := newLive(t, newIDFiles(t, ca, leafSpec{id: clientID}), RevocationFiles{}, nil)
	for _, tc := range []struct {
		name   string
		server *idFiles
		accept func(Identity) error
		want   string // "" : must succeed
	}{
		{"uri san only by ip", newIDFiles(t, ca, leafSpec{id: centralID, eku: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}), AcceptKinds(Central), ""},
		{"client as central", newIDFiles(t, ca, leafSpec{id: Identity{TrustDomain: "kb.test", Kind: Client, Name: "mallory"}}), AcceptKinds(Central),
			"dialled a client certificate"},
		{"edge as central", newIDFiles(t, ca, leafSpec{id: Identity{TrustDomain: "kb.test", Kind: Edge, Name: "e1"}}), AcceptKinds(Central),
			"dialled an edge certificate"},
		{"no serverAuth", newIDFiles(t, ca, leafSpec{id: centralID, eku: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}), AcceptKinds(Central),
			"has no serverAuth extended key usage"},
		{"wrong id", newIDFiles(t, ca, leafSpec{id: centralID}), AcceptID(Identity{TrustDomain: "kb.test", Kind: Central, Name: "c2"}),
			"but the server is"},
		{"other trust domain", func() *idFiles {
			f := newIDFiles(t, ca, leafSpec{id: Identity{TrustDomain: "evil.test", Kind: Central, Name: "c1"}})
			return f
		}(), AcceptKinds(Central), "is not in trust domain kb.test"},
		{"unknown CA", func() *idFiles {
			other := newTestCA(t, "kb.test")
			f := newIDFiles(t, other, leafSpec{id: centralID})
			f.writeCA(other, ca)
			return f
		}(), AcceptKinds(Central), "signed by a CA not in tls.ca"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var slog logBuf
			srv := newLive(t, tc.server, RevocationFiles{}, slog.logger())
			addr := healthServer(t, srv)
			var clog logBuf
			c := newLive(t, &idFiles{cli.Current().files(t), t}, RevocationFiles{}, clog.logger())
			_, err := check(t.Context(), dial(t, addr, c.ClientCredentials(tc.accept, "")))
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("call = %v, want success", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Errorf("call = %v, want an error saying %q", err, tc.want)
			case tc.want != "" && !strings.Contains(clog.String(), tc.want):
				t.Errorf("client log does not say %q:\n%s", tc.want, clog.String())
			}
		})
	}
	t.Run("explicit server name", func(t *testing.T) {
		srv := newLive(t, newIDFiles(t, ca, leafSpec{id: centralID, hosts: []string{"kb.example"}}), RevocationFiles{}, nil)
		addr := healthServer(t, srv)
		if _, err := check(t.Context(), dial(t, addr, cli.ClientCredentials(AcceptKinds(Central), "kb.example"))); err != nil {
			t.Errorf("named host: %v", err)
		}
		_, err := check(t.Context(), dial(t, addr, cli.ClientCredentials(AcceptKinds(Central), "other.example")))
		if err == nil || !strings.Contains(err.Error(), "does not name host other.example") {
			t.Errorf("wrong host = %v, want a host name refusal", err)
		}
	})
}

// files writes m back out (tests reuse a client identity).
func (m *Material) files(t *testing.T) TLSFiles {
	t.Helper()
	dir := t.TempDir()
	f := TLSFiles{CA: filepath.Join(dir, "ca.pem"), Cert: filepath.Join(dir, "cert.pem"), Key: filepath.Join(dir, "key.pem")}
	var ca, cert []byte
	for _, r := range m.Roots {
		ca = append(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: r.Raw})...)
	}
	for _, der := range m.Certificate.Certificate {
		cert = append(cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	kder, err := x509.MarshalECPrivateKey(m.Certificate.PrivateKey.(*ecdsa.PrivateKey))
	if err != nil {
		t.Fatal(err)
	}
	writeAtomic(t, f.CA, ca)
	writeAtomic(t, f.Cert, cert)
	writeAtomic(t, f.Key, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}))
	return f
}

// TestServerChecksClient: a client certificate without clientAuth is
// refused by the client itself (which says so) and, sent anyway, by the
// server, which logs why. (A client of another trust domain is refused
// per call, and audited, by FromPeer's callers.)
func TestServerChecksClient(t *testing.T) {
	ca := newTestCA(t, "kb.test")
	var slog logBuf
	srv := newLive(t, newIDFiles(t, ca, leafSpec{id: centralID}), RevocationFiles{}, slog.logger())
	addr := healthServer(t, srv)
	serverOnly := newIDFiles(t, ca, leafSpec{id: clientID, eku: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
	cli := newLive(t, serverOnly, RevocationFiles{}, nil)
	_, err := check(t.Context(), dial(t, addr, cli.ClientCredentials(AcceptKinds(Central), "")))
	if err == nil || !strings.Contains(err.Error(), "our own certificate cannot be used") || !strings.Contains(err.Error(), "no clientAuth") {
		t.Errorf("call with a serverAuth-only certificate = %v, want our own refusal naming clientAuth", err)
	}
	// Sent anyway, with plain TLS.
	m := mustMaterial(t, serverOnly)
	plain := &tls.Config{Certificates: []tls.Certificate{*m.Certificate}, RootCAs: m.Pool(), ServerName: "127.0.0.1", InsecureSkipVerify: true}
	_, _ = check(t.Context(), dial(t, addr, credentials.NewTLS(plain)))
	eventually(t, "the server to log the refusal", func() bool {
		return strings.Contains(slog.String(), "has no clientAuth extended key usage; a keybroker client, admin or edge certificate needs it")
	})
}

// TestCheckSelf: a process's own certificate must fit its role.
func TestCheckSelf(t *testing.T) {
	ca := newTestCA(t, "kb.test")
	edgeID := Identity{TrustDomain: "kb.test", Kind: Edge, Name: "e1"}
	for _, tc := range []struct {
		name string
		spec leafSpec
		role Role
		want Identity
		err  string
	}{
		{"edge ok", leafSpec{id: edgeID}, RoleEdge, edgeID, ""},
		{"edge serverAuth only", leafSpec{id: edgeID, eku: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}, RoleEdge, edgeID,
			"has no clientAuth extended key usage; an edge certificate needs serverAuth (clients dial it) and clientAuth (it dials the central tier)"},
		{"edge clientAuth only", leafSpec{id: edgeID, eku: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}, RoleEdge, edgeID, "has no serverAuth"},
		{"edge wrong name", leafSpec{id: edgeID}, RoleEdge, Identity{TrustDomain: "kb.test", Kind: Edge, Name: "e2"}, "this edge is"},
		{"central as client kind", leafSpec{id: clientID}, RoleCentral, Identity{}, "a central node needs a certificate of kind central"},
		{"central clientAuth only", leafSpec{id: centralID, eku: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}, RoleCentral, Identity{}, "has no serverAuth"},
		{"client serverAuth only", leafSpec{id: clientID, eku: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}, RoleClient, Identity{}, "has no clientAuth"},
		{"edge expired", leafSpec{id: edgeID, notBefore: time.Now().Add(-2 * time.Hour), notAfter: time.Now().Add(-time.Hour)}, RoleEdge, edgeID, "expired at"},
		{"client ok", leafSpec{id: clientID, eku: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}, RoleClient, Identity{}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := CheckSelf(mustMaterial(t, newIDFiles(t, ca, tc.spec)), tc.role, tc.want)
			if tc.err == "" && err != nil || tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
				t.Errorf("CheckSelf = %v, want %q", err, tc.err)
			}
		})
	}
}

// TestCheckedKeepsAGoodIdentity: a certificate rotated to one an edge
// cannot use (serverAuth alone) is refused and the one in force stays; a
// good one is then taken.
func TestCheckedKeepsAGoodIdentity(t *testing.T) {
	ca := newTestCA(t, "kb.test")
	edgeID := Identity{TrustDomain: "kb.test", Kind: Edge, Name: "e1"}
	f := newIDFiles(t, ca, leafSpec{id: edgeID})
	src, err := NewFileSource(f.TLSFiles, FileOptions{ReloadInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	var log logBuf
	c, err := NewChecked(src, func(m *Material) error { return CheckSelf(m, RoleEdge, edgeID) }, log.logger())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	before := c.Current()
	f.rotate(ca, leafSpec{id: edgeID, eku: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
	if err := c.Reload(); err == nil || !strings.Contains(err.Error(), "no clientAuth") {
		t.Errorf("Reload to a serverAuth-only certificate = %v, want a refusal", err)
	}
	if c.Current() != before || !strings.Contains(log.String(), "cannot serve here") {
		t.Errorf("the refused certificate replaced the identity, or was not logged:\n%s", log.String())
	}
	f.rotate(ca, leafSpec{id: edgeID})
	if err := c.Reload(); err != nil || c.Current() == before {
		t.Errorf("Reload to a good certificate = %v, changed %v", err, c.Current() != before)
	}
	if _, err := NewChecked(Static{M: mustMaterial(t, newIDFiles(t, ca, leafSpec{id: clientID}))}, func(m *Material) error { return CheckSelf(m, RoleEdge, edgeID) }, nil); err == nil {
		t.Error("NewChecked accepted an identity its check refuses")
	}
}

// TestSilentServerHandedOver: a server that waits for the client to speak
// first is not refused for it: after a short wait the connection is
// handed over and works.
func TestSilentServerHandedOver(t *testing.T) {
	ca := newTestCA(t, "kb.test")
	srvM := mustMaterial(t, newIDFiles(t, ca, leafSpec{id: centralID}))
	lis, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{*srvM.Certificate},
		ClientCAs: srvM.Pool(), ClientAuth: tls.RequireAndVerifyClientCert, NextProtos: []string{"h2"}})
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	go func() {
		c, err := lis.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		b := make([]byte, 5)
		if _, err := io.ReadFull(c, b); err == nil { // speaks only when spoken to
			c.Write(b)
		}
	}()
	cli := newLive(t, newIDFiles(t, ca, leafSpec{id: clientID}), RevocationFiles{}, nil)
	raw, err := net.Dial("tcp", lis.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	conn, _, err := cli.ClientCredentials(AcceptKinds(Central), "").ClientHandshake(t.Context(), lis.Addr().String(), raw)
	if err != nil {
		t.Fatalf("handshake with a silent server: %v", err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 5)
	if _, err := io.ReadFull(conn, got); err != nil || string(got) != "hello" {
		t.Errorf("echo = %q, %v", got, err)
	}
}

// TestBundleChangeClosesUntrusted: when the trust anchors change so that a
// connected peer's chain no longer verifies, its connection is closed;
// the server's own certificate (of the new CA) serves new handshakes.
func TestBundleChangeClosesUntrusted(t *testing.T) {
	ca, ca2 := newTestCA(t, "kb.test"), newTestCA(t, "kb.test")
	srvFiles := newIDFiles(t, ca, leafSpec{id: centralID})
	var log logBuf
	srv := newLive(t, srvFiles, RevocationFiles{}, log.logger())
	addr := healthServer(t, srv)
	cliFiles := newIDFiles(t, ca, leafSpec{id: clientID})
	cliFiles.writeCA(ca, ca2)
	cli := newLive(t, cliFiles, RevocationFiles{}, nil)
	if _, err := check(t.Context(), dial(t, addr, cli.ClientCredentials(AcceptKinds(Central), ""))); err != nil {
		t.Fatal(err)
	}
	srvFiles.writeCA(ca2)
	srvFiles.rotate(ca2, leafSpec{id: centralID})
	if err := srv.Reload(); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the connection of the dropped CA to be closed", func() bool { return srv.Conns() == 0 })
	if !strings.Contains(log.String(), "signed by a CA not in tls.ca") || !strings.Contains(log.String(), "the trust anchors changed") {
		t.Errorf("server log does not say why the connection was closed:\n%s", log.String())
	}
}
