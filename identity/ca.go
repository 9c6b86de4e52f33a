package identity

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"time"

	"github.com/keybroker/keybroker/backends"
	"github.com/keybroker/keybroker/internal/atomicfile"
)

// Default lifetimes of what a CA issues. Certificates are renewed, not
// revoked, in the common case, so a leaf's lifetime is how long a stolen
// key stays useful: nodes, whose files a node reloads and whose renewal is
// one timer on a host the operator runs, get 30 days; clients and admins,
// whose keys live on more machines (laptops, application hosts), 7 days.
// The CA itself lives 10 years: replacing it means giving every node and
// client a new bundle.
const (
	NodeValidity   = 30 * 24 * time.Hour
	ClientValidity = 7 * 24 * time.Hour
	CAValidity     = 10 * 365 * 24 * time.Hour
)

// DefaultValidity is the lifetime of a certificate of kind k when none is
// asked for.
func DefaultValidity(k Kind) time.Duration {
	switch k {
	case Edge, Central:
		return NodeValidity
	}
	return ClientValidity
}

// ExtKeyUsages are the extended key usages a certificate of kind k needs,
// and all it gets: clients and admins only ever dial (clientAuth); an edge
// serves its clients and dials the central tier (serverAuth and
// clientAuth); a central node serves (serverAuth) and carries clientAuth
// too, so that its certificate still fits should it dial a peer (today it
// dials none).
func ExtKeyUsages(k Kind) []x509.ExtKeyUsage {
	switch k {
	case Edge, Central:
		return []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
	}
	return []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
}

// Serves reports whether a kind serves TLS: only nodes carry host names.
func (k Kind) Serves() bool { return k == Edge || k == Central }

// CA issues certificates for keybroker identities. Its key is a file's
// (NewCA, LoadCA) or any crypto.Signer's, such as a key in a PKCS#11 token
// reached through [NewBackendSigner] (NewSignerCA, LoadSignerCA).
//
// # What it issues
//
// Every leaf has subject CN = the identity's name, exactly one URI SAN (the
// SPIFFE id), KeyUsage digitalSignature only, the extended key usages of
// [ExtKeyUsages] and nothing more, a random 128-bit serial, and DNS and IP
// SANs only for the kinds that serve ([Kind.Serves]); hosts given for a
// client or admin are refused. A leaf never outlives the CA: its expiry is
// cut to the CA's.
//
// The CA certificate is self-signed, may sign leaves only (path length
// zero) and carries the trust domain as its own URI SAN (spiffe://TD). It
// has no URI name constraint: the nodes check every peer's trust domain
// themselves (FromPeer), and tests issue other domains' certificates from
// one CA to show that they do.
type CA struct {
	TrustDomain string
	Cert        *x509.Certificate
	key         crypto.Signer
}

// NewCA makes a self-signed CA for trustDomain, valid for validity, with a
// fresh ECDSA P-256 key held in memory (WriteCA saves it).
func NewCA(trustDomain string, validity time.Duration) (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	return NewSignerCA(trustDomain, key, validity)
}

// NewSignerCA makes a self-signed CA for trustDomain, valid for validity,
// whose key is signer: the CA certificate is signed by it and so is every
// certificate the CA issues. The key must be ECDSA P-256.
func NewSignerCA(trustDomain string, signer crypto.Signer, validity time.Duration) (*CA, error) {
	if !tdRe.MatchString(trustDomain) {
		return nil, fmt.Errorf("identity: trust domain %q is not valid: lowercase letters, digits, '.' and '-'", trustDomain)
	}
	if validity <= 0 {
		return nil, fmt.Errorf("identity: CA validity %v is not positive", validity)
	}
	if err := checkCAKey(signer.Public()); err != nil {
		return nil, err
	}
	sn, err := serial()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          sn,
		Subject:               pkix.Name{CommonName: caCNPrefix + trustDomain},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.Add(validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
		URIs:                  []*url.URL{{Scheme: "spiffe", Host: trustDomain}},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, signer.Public(), signer)
	if err != nil {
		return nil, fmt.Errorf("identity: signing the CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &CA{TrustDomain: trustDomain, Cert: cert, key: signer}, nil
}

const caCNPrefix = "keybroker CA "

func checkCAKey(pub crypto.PublicKey) error {
	if k, ok := pub.(*ecdsa.PublicKey); !ok || k.Curve != elliptic.P256() {
		return fmt.Errorf("identity: the CA key is %T, want an ECDSA P-256 key", pub)
	}
	return nil
}

// LoadCA reads a CA written by WriteCA: its certificate and its key file.
func LoadCA(certFile, keyFile string) (*CA, error) {
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, fmt.Errorf("identity: %w", err)
	}
	block, _ := pem.Decode(keyPEM)
	if block == nil {
		return nil, fmt.Errorf("identity: %s holds no PEM key", keyFile)
	}
	key, err := x509.ParseECPrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("identity: %s: %w", keyFile, err)
	}
	return LoadSignerCA(certFile, key)
}

// LoadSignerCA reads a CA certificate whose key is signer, checking that
// the certificate is a CA's and that signer holds its key.
func LoadSignerCA(certFile string, signer crypto.Signer) (*CA, error) {
	cert, err := readCert(certFile)
	if err != nil {
		return nil, err
	}
	if !cert.IsCA {
		return nil, fmt.Errorf("identity: %s is not a CA certificate", certFile)
	}
	if pk, ok := signer.Public().(interface{ Equal(crypto.PublicKey) bool }); !ok || !pk.Equal(cert.PublicKey) {
		return nil, fmt.Errorf("identity: the CA key is not the key of %s", certFile)
	}
	td, err := CATrustDomain(cert)
	if err != nil {
		return nil, fmt.Errorf("identity: %s: %w", certFile, err)
	}
	return &CA{TrustDomain: td, Cert: cert, key: signer}, nil
}

// CATrustDomain is the trust domain a keybroker CA certificate serves: its
// spiffe://TRUST-DOMAIN URI SAN, or, for CAs made before it carried one,
// what its subject CN names.
func CATrustDomain(cert *x509.Certificate) (string, error) {
	for _, u := range cert.URIs {
		if u.Scheme == "spiffe" && (u.Path == "" || u.Path == "/") && tdRe.MatchString(u.Host) {
			return u.Host, nil
		}
	}
	if td, ok := cutPrefix(cert.Subject.CommonName, caCNPrefix); ok && tdRe.MatchString(td) {
		return td, nil
	}
	return "", errors.New("the CA certificate names no trust domain (no spiffe://TRUST-DOMAIN URI SAN)")
}

func cutPrefix(s, p string) (string, bool) {
	if len(s) >= len(p) && s[:len(p)] == p {
		return s[len(p):], true
	}
	return "", false
}

func readCert(path string) (*x509.Certificate, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("identity: %w", err)
	}
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("identity: %s holds no PEM certificate", path)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("identity: %s: %w", path, err)
	}
	return cert, nil
}

// serial is a random positive 128-bit serial number (RFC 5280 allows 20
// octets; CA/B Forum asks for at least 64 random bits).
func serial() (*big.Int, error) {
	max := new(big.Int).Lsh(big.NewInt(1), 128)
	for {
		n, err := rand.Int(rand.Reader, max)
		if err != nil {
			return nil, fmt.Errorf("identity: serial number: %w", err)
		}
		if n.Sign() > 0 {
			return n, nil
		}
	}
}

// dnsRe is a host name as certificates carry it: dot-separated labels of
// letters, digits and '-', no wildcard.
var dnsRe = regexp.MustCompile(`^([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$`)

// Hosts are the DNS names and IP addresses a serving certificate carries.
type Hosts struct {
	DNS []string
	IPs []net.IP
}

// ParseHosts sorts host names and IP addresses apart, refusing what is
// neither (a wildcard, a name with a port, an empty string) and dropping
// repeats.
func ParseHosts(hosts []string) (Hosts, error) {
	var h Hosts
	for _, s := range hosts {
		if ip := net.ParseIP(s); ip != nil {
			if !slices.ContainsFunc(h.IPs, ip.Equal) {
				h.IPs = append(h.IPs, ip)
			}
			continue
		}
		if len(s) > 253 || !dnsRe.MatchString(s) {
			return Hosts{}, fmt.Errorf("identity: host %q is neither a DNS name (letters, digits, '-' and '.'; no wildcard, no port) nor an IP address", s)
		}
		if !slices.Contains(h.DNS, s) {
			h.DNS = append(h.DNS, s)
		}
	}
	return h, nil
}

// Issue makes a leaf certificate and a fresh ECDSA P-256 key for id (which
// must be in the CA's trust domain), with the usages of its kind and, for
// the kinds that serve, the given DNS names and IP addresses as SANs.
// validity 0 means DefaultValidity(id.Kind). It returns PEM certificate and
// key.
func (ca *CA) Issue(id Identity, hosts []string, validity time.Duration) (certPEM, keyPEM []byte, err error) {
	// Check before making a key for nothing.
	if _, err := ca.template(id, hosts, validity); err != nil {
		return nil, nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	certPEM, err = ca.IssueKey(id, hosts, validity, &key.PublicKey)
	if err != nil {
		return nil, nil, err
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return certPEM, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), nil
}

// IssueKey is Issue for a key the caller already has: it certifies pub and
// returns the PEM certificate.
func (ca *CA) IssueKey(id Identity, hosts []string, validity time.Duration, pub crypto.PublicKey) ([]byte, error) {
	tmpl, err := ca.template(id, hosts, validity)
	if err != nil {
		return nil, err
	}
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() {
			return nil, fmt.Errorf("identity: an ECDSA key on %s: want P-256 or P-384", k.Curve.Params().Name)
		}
	default:
		return nil, fmt.Errorf("identity: a %T key: want ECDSA P-256 or P-384", pub)
	}
	if ca.key == nil {
		return nil, errors.New("identity: this CA has no key to sign with")
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, pub, ca.key)
	if err != nil {
		return nil, fmt.Errorf("identity: signing the certificate of %s: %w", id, err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), nil
}

// template checks an issuing request and makes its certificate template.
func (ca *CA) template(id Identity, hosts []string, validity time.Duration) (*x509.Certificate, error) {
	if id.TrustDomain != ca.TrustDomain {
		return nil, fmt.Errorf("identity: %s is not in trust domain %q", id, ca.TrustDomain)
	}
	if _, err := Parse(id.String()); err != nil {
		return nil, err
	}
	if len(hosts) > 0 && !id.Kind.Serves() {
		return nil, fmt.Errorf("identity: %s certificates carry no DNS names or IP addresses (%v): a %s only dials, it never serves; leave the hosts out", id.Kind, hosts, id.Kind)
	}
	h, err := ParseHosts(hosts)
	if err != nil {
		return nil, err
	}
	switch {
	case validity < 0:
		return nil, fmt.Errorf("identity: validity %v is negative", validity)
	case validity == 0:
		validity = DefaultValidity(id.Kind)
	}
	sn, err := serial()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	notAfter := now.Add(validity)
	if notAfter.After(ca.Cert.NotAfter) {
		notAfter = ca.Cert.NotAfter
	}
	return &x509.Certificate{
		SerialNumber: sn,
		Subject:      pkix.Name{CommonName: id.Name},
		NotBefore:    now.Add(-time.Minute), // for clocks a little behind
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  ExtKeyUsages(id.Kind),
		URIs:         []*url.URL{id.URL()},
		DNSNames:     h.DNS,
		IPAddresses:  h.IPs,
	}, nil
}

// CertPEM is the CA certificate in PEM.
func (ca *CA) CertPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Cert.Raw})
}

// WriteCA writes the CA certificate (0644) and key (0600). A CA whose key
// is not in memory (a token's) has no key file to write: use WriteCert.
func (ca *CA) WriteCA(certFile, keyFile string) error {
	key, ok := ca.key.(*ecdsa.PrivateKey)
	if !ok {
		return errors.New("identity: the CA key is not held in memory and cannot be written to a file")
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	return errors.Join(
		writeFile(certFile, ca.CertPEM(), 0o644),
		writeFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600),
	)
}

// WriteCert writes the CA certificate alone (0644).
func (ca *CA) WriteCert(certFile string) error {
	return writeFile(certFile, ca.CertPEM(), 0o644)
}

// IssueFiles issues a certificate for id and writes dir/name.crt (0644) and
// dir/name.key (0600), returning the TLS file set (with the CA file given).
func (ca *CA) IssueFiles(id Identity, hosts []string, validity time.Duration, dir, name, caFile string) (TLSFiles, error) {
	c, k, err := ca.Issue(id, hosts, validity)
	if err != nil {
		return TLSFiles{}, err
	}
	f := TLSFiles{CA: caFile, Cert: filepath.Join(dir, name+".crt"), Key: filepath.Join(dir, name+".key")}
	// The key first: a process reloading the pair sees a new key with
	// the old certificate (a mismatch it refuses, keeping what it has)
	// rather than an old key with a new certificate it could not use.
	if err := writeFile(f.Key, k, 0o600); err != nil {
		return TLSFiles{}, err
	}
	if err := writeFile(f.Cert, c, 0o644); err != nil {
		return TLSFiles{}, err
	}
	return f, nil
}

// writeFile replaces path through a fresh temporary file (never a
// predictable name a planted link could redirect), synced and renamed.
func writeFile(path string, data []byte, mode os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	return atomicfile.Write(path, data, mode)
}

// BackendSigner is a crypto.Signer whose ECDSA P-256 key stays in a root of
// trust (a PKCS#11 token, a KMS): Sign hands the digest to the backend.
// crypto.Signer's Sign takes no context, so the one given to
// NewBackendSigner bounds every signature made through it; a PKCS#11 call
// in progress cannot be interrupted (see backends/pkcs11).
type BackendSigner struct {
	ctx context.Context
	b   backends.Signer
	key string
	pub *ecdsa.PublicKey
}

var _ crypto.Signer = (*BackendSigner)(nil)

// NewBackendSigner looks up key's public half in b and returns a signer
// for it. The key must be ECDSA P-256.
func NewBackendSigner(ctx context.Context, b backends.Signer, key string) (*BackendSigner, error) {
	pub, err := b.PublicKey(ctx, key)
	if err != nil {
		return nil, fmt.Errorf("identity: CA key %s: %w", key, err)
	}
	ec, ok := pub.(*ecdsa.PublicKey)
	if !ok || ec.Curve != elliptic.P256() {
		return nil, fmt.Errorf("identity: CA key %s is a %T, want an ECDSA P-256 key", key, pub)
	}
	return &BackendSigner{ctx: ctx, b: b, key: key, pub: ec}, nil
}

// Public returns the key's public half.
func (s *BackendSigner) Public() crypto.PublicKey { return s.pub }

// Sign signs a SHA-256 digest in the backend; the result is ASN.1 DER.
func (s *BackendSigner) Sign(_ io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	if opts.HashFunc() != crypto.SHA256 || len(digest) != 32 {
		return nil, fmt.Errorf("identity: the CA key signs SHA-256 digests only, not %v", opts.HashFunc())
	}
	return s.b.Sign(s.ctx, s.key, digest)
}
