package identity

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
)

// Material is one version of a process's identity: the certificate it
// presents and the trust anchors of its trust domain it verifies peers
// against. A Material never changes; a Source hands out a new one when the
// identity rotates.
type Material struct {
	// Certificate is the chain presented, leaf first, with its private
	// key; Leaf is parsed.
	Certificate *tls.Certificate
	// ID is the leaf's SPIFFE id.
	ID Identity
	// Roots are the trust anchors (CA certificates) of ID's trust domain.
	Roots []*x509.Certificate

	pool *x509.CertPool
}

// NewMaterial checks a certificate and its trust anchors and makes them a
// Material: the chain must be non-empty with a private key, the leaf must
// carry exactly one keybroker SPIFFE id, and there must be at least one
// root.
func NewMaterial(cert *tls.Certificate, roots []*x509.Certificate) (*Material, error) {
	if cert == nil || len(cert.Certificate) == 0 {
		return nil, errors.New("identity: no certificate")
	}
	if cert.PrivateKey == nil {
		return nil, errors.New("identity: certificate has no private key")
	}
	if len(roots) == 0 {
		return nil, errors.New("identity: no trust anchors (CA certificates)")
	}
	c := *cert
	if c.Leaf == nil {
		leaf, err := x509.ParseCertificate(c.Certificate[0])
		if err != nil {
			return nil, fmt.Errorf("identity: certificate: %w", err)
		}
		c.Leaf = leaf
	}
	id, err := FromCertificate(c.Leaf)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	for _, r := range roots {
		pool.AddCert(r)
	}
	return &Material{Certificate: &c, ID: id, Roots: roots, pool: pool}, nil
}

// Pool is Roots as a certificate pool, for verification.
func (m *Material) Pool() *x509.CertPool { return m.pool }

// Source supplies an identity that may change while the process runs:
// files reloaded when they change, or a SPIFFE Workload API agent that
// rotates short-lived SVIDs.
type Source interface {
	// Current is the identity in force. It is called on every TLS
	// handshake, so it is cheap and never blocks; it never returns nil.
	Current() *Material
	// Changes receives a value after Current has changed (coalesced: a
	// receiver that is slow sees one value for several changes).
	Changes() <-chan struct{}
	// Close stops following changes.
	Close() error
}

// Static is a Source whose identity never changes (tests, and callers
// that build their own tls.Config).
type Static struct{ M *Material }

// Current returns the Material.
func (s Static) Current() *Material { return s.M }

// Changes never receives.
func (Static) Changes() <-chan struct{} { return nil }

// Close does nothing.
func (Static) Close() error { return nil }
