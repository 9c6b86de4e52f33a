package client

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/identity"
	"github.com/keybroker/keybroker/identity/workload"
	"github.com/keybroker/keybroker/internal/forwardproof"
	"github.com/keybroker/keybroker/internal/hostport"
)

// Environment variables New reads for settings the Config leaves empty.
const (
	EnvAddr = "KEYBROKER_ADDR" // comma-separated host:port list
	EnvCA   = "KEYBROKER_CA"
	EnvCert = "KEYBROKER_CERT"
	EnvKey  = "KEYBROKER_KEY"
	// EnvSPIFFESocket names a SPIFFE Workload API agent's socket to take
	// the identity from when no certificate file is configured.
	// SPIFFE_ENDPOINT_SOCKET alone is not used: an identity comes from an
	// agent only when keybroker is told so.
	EnvSPIFFESocket = "KEYBROKER_SPIFFE_SOCKET"
)

// Defaults.
const (
	DefaultLookupTTL   = 30 * time.Second
	DefaultMaxAttempts = 3
	DefaultBackoff     = 50 * time.Millisecond
	DefaultMaxBackoff  = time.Second
	// maxMessage bounds a response: a 4 MiB plaintext plus framing.
	maxMessage = 16 << 20
)

// Config configures a Client. Only the node addresses and the TLS
// credentials are needed; New takes them from the KEYBROKER_* environment
// when they are not set here.
type Config struct {
	// Addrs are host:port addresses of one or more nodes — edges near the
	// application, the central tier, or both. The client asks them which
	// nodes serve each key (LookupKey) and falls back to them in order.
	// Default: KEYBROKER_ADDR, split at commas.
	Addrs []string
	// Source is the client's identity (certificate, key and the CAs that
	// sign the nodes), followed as it changes: a SPIFFE Workload API
	// source made by the caller, say. The client does not close it. When
	// Source, TLS and SPIFFESocket are not given, the identity is read
	// from CAFile, CertFile and KeyFile, and those files are reloaded
	// when they change.
	//
	// With a Source, SPIFFESocket or the files, a node is verified by its SPIFFE id: it
	// must chain to the CAs with the serverAuth usage and be an edge or a
	// central node of the client's trust domain; its host name is not
	// checked, so nodes may be dialled by IP address.
	Source identity.Source
	// TLS is a mutual-TLS client configuration of the caller's own, used
	// when Source is nil. Go verifies the chain and host name as the
	// configuration says, and New adds keybroker's server check: the
	// node's leaf must carry the SPIFFE id of an edge or central node
	// (of the client certificate's trust domain, when Certificates holds
	// it).
	TLS *tls.Config
	// Logger receives failed handshakes with their reasons (nil: none).
	Logger *slog.Logger
	// SPIFFESocket is a SPIFFE Workload API agent's socket
	// (unix:///path or an absolute path) to take the identity from: the
	// client's X.509 SVID, its key and the trust domain's bundle, followed
	// as the agent rotates them. New waits for the first SVID (30 s at
	// most, or until its ctx is done) and Close closes the source. It
	// excludes Source, TLS and the certificate files. Default:
	// KEYBROKER_SPIFFE_SOCKET, when no certificate file is configured
	// (Config or environment).
	SPIFFESocket string
	// CAFile, CertFile and KeyFile are PEM files: the CA certificates,
	// the client certificate (with its SPIFFE URI SAN) and its private
	// key. Defaults: KEYBROKER_CA, KEYBROKER_CERT, KEYBROKER_KEY.
	CAFile, CertFile, KeyFile string
	// Direct makes the client use Addrs alone, in order, and never ask
	// LookupKey: for an application pinned to a local edge, or a tool
	// told to talk to one node.
	Direct bool
	// Region is the client's region, sent with LookupKey so that edges
	// in it come first. Empty: the answering node's region.
	Region string
	// Labels are further client labels for LookupKey.
	Labels map[string]string
	// LookupTTL is how long a routing answer is reused (default
	// DefaultLookupTTL). A routing error drops it at once.
	LookupTTL time.Duration
	// MaxAttempts is how many passes over a key's route an operation
	// makes before giving up on Unavailable nodes (default
	// DefaultMaxAttempts). The caller's deadline bounds them too.
	MaxAttempts int
	// Backoff and MaxBackoff bound the jittered, doubling pause between
	// passes (defaults DefaultBackoff and DefaultMaxBackoff).
	Backoff, MaxBackoff time.Duration
	// DialOptions are added to every connection (interceptors, for
	// instance).
	DialOptions []grpc.DialOption
	// Getenv reads the environment (default os.Getenv).
	Getenv func(string) string
}

// Client performs KeyBroker operations, routing each to the best node for
// its key. It is safe for concurrent use; make one per process.
type Client struct {
	cfg    Config
	labels map[string]string
	// creds and signer serve every connection made with a caller's
	// Config.TLS.
	creds  credentials.TransportCredentials
	signer crypto.Signer
	opts   []grpc.DialOption

	mu     sync.Mutex
	conns  map[connKey]*conn
	closed bool

	routes *routeCache
	// live is the identity followed (nil with a caller's Config.TLS).
	live *identity.Live
	// td is the trust domain of the client's certificate: forward
	// proofs name edges in it.
	td string
}

// conn is one node's connection and the calls made to it.
type conn struct {
	addr  string
	cc    *grpc.ClientConn
	kb    kbv1.KeyBrokerClient
	calls atomic.Uint64
}

// New makes a Client. It dials nothing: connections are made on first use,
// so New fails only on a bad configuration.
func New(ctx context.Context, cfg Config) (*Client, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	getenv := cfg.Getenv
	if getenv == nil {
		getenv = os.Getenv
	}
	if len(cfg.Addrs) == 0 {
		for a := range strings.SplitSeq(getenv(EnvAddr), ",") {
			if a = strings.TrimSpace(a); a != "" {
				cfg.Addrs = append(cfg.Addrs, a)
			}
		}
	}
	if len(cfg.Addrs) == 0 {
		return nil, fmt.Errorf("client: no node address: set Config.Addrs or %s", EnvAddr)
	}
	for _, a := range cfg.Addrs {
		if err := hostport.Check(a); err != nil {
			return nil, fmt.Errorf("client: %w", err)
		}
	}
	var live *identity.Live
	files := identity.TLSFiles{CA: cfg.CAFile, Cert: cfg.CertFile, Key: cfg.KeyFile}
	socket := cfg.SPIFFESocket
	switch named := files != (identity.TLSFiles{}); {
	case socket != "" && (cfg.Source != nil || cfg.TLS != nil || named):
		return nil, errors.New("client: Config.SPIFFESocket and Config.Source, Config.TLS or the certificate files are all given: take the identity from one")
	case socket == "" && cfg.Source == nil && cfg.TLS == nil && !named:
		files = identity.TLSFiles{CA: getenv(EnvCA), Cert: getenv(EnvCert), Key: getenv(EnvKey)}
		if env := getenv(EnvSPIFFESocket); env != "" {
			if files != (identity.TLSFiles{}) {
				return nil, fmt.Errorf("client: both %s and %s/%s/%s are set: take the identity from one", EnvSPIFFESocket, EnvCA, EnvCert, EnvKey)
			}
			socket = env
		}
	default:
		files = identity.TLSFiles{CA: or(files.CA, getenv(EnvCA)), Cert: or(files.Cert, getenv(EnvCert)), Key: or(files.Key, getenv(EnvKey))}
	}
	switch {
	case cfg.Source != nil:
		live = identity.NewLive(keepOpen{cfg.Source}, nil, cfg.Logger)
	case socket != "":
		src, err := workload.NewSource(ctx, socket, workload.Options{Logger: cfg.Logger})
		if err != nil {
			return nil, fmt.Errorf("client: %w", err)
		}
		live = identity.NewLive(src, nil, cfg.Logger)
	case cfg.TLS == nil:
		var missing []string
		for _, m := range []struct{ v, name string }{{files.CA, "CAFile (" + EnvCA + ")"}, {files.Cert, "CertFile (" + EnvCert + ")"}, {files.Key, "KeyFile (" + EnvKey + ")"}} {
			if m.v == "" {
				missing = append(missing, m.name)
			}
		}
		if len(missing) > 0 {
			return nil, fmt.Errorf("client: missing %s (or SPIFFESocket, %s): keybroker always uses mutual TLS", strings.Join(missing, ", "), EnvSPIFFESocket)
		}
		src, err := sourceFor(files, cfg.Logger)
		if err != nil {
			return nil, fmt.Errorf("client: TLS configuration: %w", err)
		}
		live = identity.NewLive(src, nil, cfg.Logger)
	default:
		if len(cfg.TLS.Certificates) == 0 && cfg.TLS.GetClientCertificate == nil {
			return nil, errors.New("client: the TLS configuration has no client certificate: keybroker always uses mutual TLS")
		}
	}
	if live != nil {
		if err := identity.CheckSelf(live.Current(), identity.RoleClient, identity.Identity{}); err != nil {
			live.Close()
			if socket != "" {
				err = workload.ExplainSelf(err, socket)
			}
			return nil, fmt.Errorf("client: %w", err)
		}
	}
	if cfg.LookupTTL <= 0 {
		cfg.LookupTTL = DefaultLookupTTL
	}
	if cfg.MaxAttempts <= 0 {
		cfg.MaxAttempts = DefaultMaxAttempts
	}
	if cfg.Backoff <= 0 {
		cfg.Backoff = DefaultBackoff
	}
	if cfg.MaxBackoff < cfg.Backoff {
		cfg.MaxBackoff = max(DefaultMaxBackoff, cfg.Backoff)
	}
	labels := make(map[string]string, len(cfg.Labels)+1)
	for k, v := range cfg.Labels {
		labels[k] = v
	}
	if cfg.Region != "" {
		labels["region"] = cfg.Region
	}
	c := &Client{
		cfg:    cfg,
		labels: labels,
		conns:  map[connKey]*conn{},
		routes: newRouteCache(cfg.LookupTTL, time.Now),
		live:   live,
	}
	if live != nil {
		c.td = live.Current().ID.TrustDomain
	} else {
		c.signer, c.td = proofSigner(cfg.TLS)
		c.creds = credentials.NewTLS(withServerCheck(cfg.TLS, c.td, identity.AcceptKinds(identity.Edge, identity.Central)))
	}
	c.opts = append([]grpc.DialOption{
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxMessage), grpc.MaxCallSendMsgSize(maxMessage)),
	}, cfg.DialOptions...)
	return c, nil
}

// dialOptions are a new connection's credentials and forward-proof
// interceptor, then c.opts. With a followed identity each connection has
// its own credentials, whose signer signs with the key of the certificate
// last presented on it (identity.Live.DialCredentials): a proof made after
// a rotation matches the chain the edge saw.
//
// want is the node a lookup answer named at that address: the connection
// then accepts exactly that node's SPIFFE id, so an address an edge
// registered cannot lead the client to another node of the deployment. A
// zero want (a configured address) accepts any edge or central node.
func (c *Client) dialOptions(want identity.Identity) []grpc.DialOption {
	accept := identity.AcceptKinds(identity.Edge, identity.Central)
	if want != (identity.Identity{}) {
		accept = identity.AcceptID(want)
	}
	creds, signer := c.creds, c.signer
	if c.live != nil {
		creds, signer = c.live.DialCredentials(accept, "")
	} else if want != (identity.Identity{}) {
		creds = credentials.NewTLS(withServerCheck(c.cfg.TLS, c.td, accept))
	}
	return append([]grpc.DialOption{
		grpc.WithTransportCredentials(creds),
		grpc.WithChainUnaryInterceptor(forwardproof.NewInterceptor(signer, nil).Unary),
	}, c.opts...)
}

// proofSigner is the key forward proofs are signed with
// (forwardproof.SignerOf) and the client certificate's trust domain.
func proofSigner(t *tls.Config) (crypto.Signer, string) {
	signer := forwardproof.SignerOf(t)
	if signer == nil {
		return nil, ""
	}
	leaf, err := x509.ParseCertificate(t.Certificates[0].Certificate[0])
	if err != nil {
		return signer, ""
	}
	id, err := identity.FromCertificate(leaf)
	if err != nil {
		return signer, ""
	}
	return signer, id.TrustDomain
}

// sourceFor is where the client's identity comes from when Config names
// files: the files, reloaded when they change. (Config.SPIFFESocket takes
// it from a SPIFFE Workload API agent, and Config.Source from any
// identity.Source.)
func sourceFor(files identity.TLSFiles, log *slog.Logger) (identity.Source, error) {
	return identity.NewFileSource(files, identity.FileOptions{Logger: log})
}

// keepOpen is a caller's Source the client uses but does not close.
type keepOpen struct{ identity.Source }

func (keepOpen) Close() error { return nil }

// withServerCheck adds to a caller's TLS configuration the check Go's
// verifier does not make: the node's leaf carries a SPIFFE id that accept
// takes (an edge or central node, or one node), of trust domain td when td
// is known.
func withServerCheck(t *tls.Config, td string, accept func(identity.Identity) error) *tls.Config {
	t = t.Clone()
	theirs := t.VerifyConnection
	t.VerifyConnection = func(cs tls.ConnectionState) error {
		if theirs != nil {
			if err := theirs(cs); err != nil {
				return err
			}
		}
		if len(cs.PeerCertificates) == 0 {
			return &identity.PeerError{Reason: "the server presented no certificate"}
		}
		return identity.CheckServerID(cs.PeerCertificates[0], td, accept)
	}
	return t
}

func or(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// errClosed is returned by operations on a closed Client.
var errClosed = errors.New("client: closed")

// conn returns the connection to addr for node want (zero: any edge or
// central node, for a configured address), making it on first use.
func (c *Client) conn(addr string, want identity.Identity) (*conn, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, errClosed
	}
	k := connKey{addr, want}
	if cn, ok := c.conns[k]; ok {
		return cn, nil
	}
	cc, err := grpc.NewClient(addr, c.dialOptions(want)...)
	if err != nil {
		return nil, fmt.Errorf("client: node %q: %w", addr, err)
	}
	cn := &conn{addr: addr, cc: cc, kb: kbv1.NewKeyBrokerClient(cc)}
	c.conns[k] = cn
	return cn, nil
}

// connKey names a connection: an address, and the node expected there.
type connKey struct {
	addr string
	want identity.Identity
}

// Close closes every connection. Operations after Close fail.
func (c *Client) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil
	}
	c.closed = true
	var errs []error
	for _, cn := range c.conns {
		errs = append(errs, cn.cc.Close())
	}
	if c.live != nil {
		errs = append(errs, c.live.Close())
	}
	return errors.Join(errs...)
}

// Calls reports the RPCs made so far to each node address (lookups
// included): how the client's load spreads, and how few calls the
// envelope caches leave.
func (c *Client) Calls() map[string]uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[string]uint64, len(c.conns))
	for k, cn := range c.conns {
		out[k.addr] += cn.calls.Load()
	}
	return out
}
