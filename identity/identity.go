// Package identity authenticates keybroker's callers: mutual TLS on every
// port, and an identity taken from the client certificate's URI SAN,
// spiffe://<trust-domain>/<kind>/<name>, where kind is client, admin, edge
// or central.
//
// # Rules
//
// A certificate carries exactly one spiffe:// URI SAN. The trust domain must
// be the node's own; certificates from another CA never get this far (the
// TLS handshake refuses them). Names are 1-128 characters of
// [A-Za-z0-9._-]. [FromPeer] takes the Identity of a gRPC call's verified
// client certificate.
//
// # Live identities
//
// A process's identity is a [Source]: [FileSource] follows PEM files,
// reloading them when they change or on Reload (SIGHUP). [Revocation]
// adds a CRL file and a deny list. [Live] builds the TLS configurations
// and gRPC credentials of servers and clients from them: both ends are
// checked (a client verifies the server's SPIFFE id, kind and usage, not
// its host name), failed handshakes are logged with the reason in words
// on both sides, and connections are closed when the certificate they
// were authenticated with expires or is revoked. [CheckSelf] refuses a
// certificate that cannot serve the process's role; [Checked] applies it
// at every rotation, keeping the identity in force.
//
// # Dev CA
//
// [NewCA] makes an ECDSA P-256 CA and issues leaf certificates for SPIFFE
// ids, for `keybroker dev` and tests. Private keys are written 0600.
package identity

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"os"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"weak"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
)

// Kind is what a caller is.
type Kind string

// Kinds.
const (
	Client  Kind = "client"
	Admin   Kind = "admin"
	Edge    Kind = "edge"
	Central Kind = "central"
)

// Identity is an authenticated caller.
type Identity struct {
	TrustDomain string
	Kind        Kind
	Name        string
}

// String is the SPIFFE id.
func (i Identity) String() string {
	return "spiffe://" + i.TrustDomain + "/" + string(i.Kind) + "/" + i.Name
}

// URL returns the SPIFFE id as a URL, for certificate SANs.
func (i Identity) URL() *url.URL {
	return &url.URL{Scheme: "spiffe", Host: i.TrustDomain, Path: "/" + string(i.Kind) + "/" + i.Name}
}

var (
	nameRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)
	tdRe   = regexp.MustCompile(`^[a-z0-9]([a-z0-9.-]{0,253}[a-z0-9])?$`)
)

// ValidName reports whether name can name a principal.
func ValidName(name string) bool { return nameRe.MatchString(name) }

// Parse parses a SPIFFE id of keybroker's form.
func Parse(id string) (Identity, error) {
	u, err := url.Parse(id)
	if err != nil || u.Scheme != "spiffe" || u.User != nil || u.RawQuery != "" || u.Fragment != "" || u.Port() != "" {
		return Identity{}, fmt.Errorf("identity: %q is not a spiffe://trust-domain/kind/name id", id)
	}
	if !tdRe.MatchString(u.Host) {
		return Identity{}, fmt.Errorf("identity: trust domain %q is not valid", u.Host)
	}
	parts := strings.Split(strings.TrimPrefix(u.Path, "/"), "/")
	if len(parts) != 2 {
		return Identity{}, fmt.Errorf("identity: %q: path must be /kind/name", id)
	}
	k := Kind(parts[0])
	switch k {
	case Client, Admin, Edge, Central:
	default:
		return Identity{}, fmt.Errorf("identity: %q: kind %q is not client, admin, edge or central", id, parts[0])
	}
	if !ValidName(parts[1]) {
		return Identity{}, fmt.Errorf("identity: %q: name must be 1-128 of [A-Za-z0-9._-]", id)
	}
	out := Identity{TrustDomain: u.Host, Kind: k, Name: parts[1]}
	if !out.spelledAs(id) {
		// One identity, one spelling: no percent-encoding, upper-case
		// scheme or empty query or fragment making an alias of it.
		return Identity{}, fmt.Errorf("identity: %q is not written as %s", id, out)
	}
	return out, nil
}

// spelledAs says whether s is exactly i.String(), without building it.
func (i Identity) spelledAs(s string) bool {
	rest, ok := strings.CutPrefix(s, "spiffe://")
	if !ok {
		return false
	}
	for _, part := range []string{i.TrustDomain, "/", string(i.Kind), "/", i.Name} {
		if rest, ok = strings.CutPrefix(rest, part); !ok {
			return false
		}
	}
	return rest == ""
}

// FromCertificate extracts the identity of a verified leaf certificate.
func FromCertificate(cert *x509.Certificate) (Identity, error) {
	var ids []*url.URL
	for _, u := range cert.URIs {
		if u.Scheme == "spiffe" {
			ids = append(ids, u)
		}
	}
	if len(ids) != 1 {
		return Identity{}, fmt.Errorf("identity: certificate has %d spiffe URI SANs, want exactly 1", len(ids))
	}
	return Parse(ids[0].String())
}

type ctxKey struct{}

// NewContext returns ctx carrying id.
func NewContext(ctx context.Context, id Identity) context.Context {
	return context.WithValue(ctx, ctxKey{}, id)
}

// FromContext returns the identity an interceptor put in ctx.
func FromContext(ctx context.Context) (Identity, bool) {
	id, ok := ctx.Value(ctxKey{}).(Identity)
	return id, ok
}

// ErrUnauthenticated is returned when a peer presents no usable identity.
var ErrUnauthenticated = errors.New("identity: unauthenticated")

// FromPeer extracts the identity of a gRPC peer's verified client
// certificate, checking its trust domain. A connection's certificate is
// parsed once, on its first call, not on every call (leafCache).
func FromPeer(ctx context.Context, trustDomain string) (Identity, error) {
	p, ok := peer.FromContext(ctx)
	if !ok || p.AuthInfo == nil {
		return Identity{}, fmt.Errorf("%w: no TLS peer", ErrUnauthenticated)
	}
	ti, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok {
		return Identity{}, fmt.Errorf("%w: not a TLS connection", ErrUnauthenticated)
	}
	if len(ti.State.VerifiedChains) == 0 || len(ti.State.VerifiedChains[0]) == 0 {
		return Identity{}, fmt.Errorf("%w: no verified client certificate", ErrUnauthenticated)
	}
	id, err := leafIDs.of(ti.State.VerifiedChains[0][0])
	if err != nil {
		return Identity{}, fmt.Errorf("%w: %v", ErrUnauthenticated, err)
	}
	if id.TrustDomain != trustDomain {
		return Identity{}, fmt.Errorf("%w: trust domain %q is not %q", ErrUnauthenticated, id.TrustDomain, trustDomain)
	}
	return id, nil
}

// TLSFiles names PEM files: a CA bundle, a certificate and its key.
type TLSFiles struct {
	CA   string // CA certificates that sign peers
	Cert string // this node's (or client's) certificate chain
	Key  string // its private key
}

// Validate checks that every file is named.
func (f TLSFiles) Validate() error {
	if f.CA == "" || f.Cert == "" || f.Key == "" {
		return errors.New("identity: TLS needs a CA file, a certificate file and a key file")
	}
	return nil
}

func (f TLSFiles) load() (*x509.CertPool, tls.Certificate, error) {
	if err := f.Validate(); err != nil {
		return nil, tls.Certificate{}, err
	}
	caPEM, err := os.ReadFile(f.CA)
	if err != nil {
		return nil, tls.Certificate{}, fmt.Errorf("identity: CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, tls.Certificate{}, fmt.Errorf("identity: %s holds no PEM certificates", f.CA)
	}
	cert, err := tls.LoadX509KeyPair(f.Cert, f.Key)
	if err != nil {
		return nil, tls.Certificate{}, fmt.Errorf("identity: certificate %s / key %s: %w", f.Cert, f.Key, err)
	}
	return pool, cert, nil
}

// ServerConfig is a TLS 1.3 server configuration that requires and verifies
// a client certificate from the CA.
func (f TLSFiles) ServerConfig() (*tls.Config, error) {
	pool, cert, err := f.load()
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		ClientCAs:    pool,
		ClientAuth:   tls.RequireAndVerifyClientCert,
	}, nil
}

// ClientConfig is a TLS 1.3 client configuration presenting the certificate
// and trusting only the CA. serverName may be empty to use the dialled host.
func (f TLSFiles) ClientConfig(serverName string) (*tls.Config, error) {
	pool, cert, err := f.load()
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		RootCAs:      pool,
		ServerName:   serverName,
	}, nil
}

// maxLeafIDs bounds leafCache: when it holds this many identities it
// starts afresh.
const maxLeafIDs = 1 << 12

// leafIDs remembers the identities of the verified leaf certificates of
// calls, so that the SPIFFE id of a connection's certificate is parsed on
// its first call rather than on every call. The TLS state of a connection
// holds the same *x509.Certificate for the connection's life, and a
// certificate is never changed once parsed, so its pointer stands for its
// contents. Keys are weak pointers: the cache keeps no certificate (and so
// no closed connection's state) alive, and a certificate allocated later
// at a collected one's address is a different key. Only identities that
// parse are kept; the trust domain is checked on every call.
var leafIDs leafCache

type leafCache struct {
	m atomic.Pointer[sync.Map] // weak.Pointer[x509.Certificate] → Identity
	n atomic.Int64
}

// of returns the identity of leaf, parsing it only the first time.
func (c *leafCache) of(leaf *x509.Certificate) (Identity, error) {
	m := c.m.Load()
	if m == nil {
		m = new(sync.Map)
		if !c.m.CompareAndSwap(nil, m) {
			m = c.m.Load()
		}
	}
	key := weak.Make(leaf)
	if v, ok := m.Load(key); ok {
		return v.(Identity), nil
	}
	id, err := FromCertificate(leaf)
	if err != nil {
		return Identity{}, err
	}
	if c.n.Add(1) > maxLeafIDs {
		c.n.Store(1)
		m = new(sync.Map)
		c.m.Store(m)
	}
	m.Store(key, id)
	return id, nil
}
