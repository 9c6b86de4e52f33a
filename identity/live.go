package identity

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/credentials"
)

// Live is a process's identity in use: the TLS configurations and gRPC
// credentials of its servers and clients, built from a Source and an
// optional Revocation, that follow them as they change.
//
// # Both ends checked
//
// A server requires a client certificate that chains to the current
// roots with the clientAuth usage and is not revoked; the SPIFFE id it
// names and its trust domain are checked on every call (FromPeer), so a
// caller of another trust domain is refused and audited there. A client verifies the server's certificate itself
// (Go's verifier is switched off only to put this in its place): it must
// chain to the current roots with the serverAuth usage, name a SPIFFE id
// of the trust domain that the caller's accept function takes (a kind, an
// exact id), and not be revoked. The server is known by its SPIFFE id, not
// its host name, so a certificate with only a URI SAN serves when dialled
// by IP; a host name is checked as well only when the caller names one.
//
// # Live connections
//
// Every authenticated connection made through ServerCredentials or
// ClientCredentials is tracked with the peer's verified chain. It is
// closed when the first certificate of that chain expires, when a
// revocation reload revokes it, and when a change of the trust anchors
// means it no longer verifies. A reload never closes a healthy connection:
// a new certificate of our own is used for new handshakes, and the peers
// already connected keep their connections — until the certificate we
// presented on a connection we dialled nears its expiry: a quarter of the
// time it had left at the handshake before (at most 5 minutes), if a newer
// one is held by then, the connection is closed so that gRPC redials with
// the newer one. The server would otherwise cut it only after the expiry,
// and meanwhile the central tier refuses the forward proofs that name its
// chain.
//
// # Failures in words
//
// A failed handshake is logged at warn on both sides with the reason in
// words (Explain), and a client's error carries the same text, so it
// reaches the user of the CLI or the SDK in the RPC's error. When a server
// refuses our own certificate, the client says what is wrong with it if
// it can tell (expired, no clientAuth usage, not signed by its own CA). A
// TLS 1.3 client finishes its handshake before the server has judged its
// certificate, so ClientCredentials waits, within the dial deadline, for
// the server's first bytes (a gRPC server speaks first): a refusal then
// fails the handshake with its reason instead of a broken pipe on the
// first call.
//
// # Limitations
//
// Connections of the operations port (ServerTLS, HTTP) are checked at
// every handshake but not tracked; they are short. Forward proofs signed
// with the current key during a rotation may name it on a connection
// authenticated with the old one unless the signer of DialCredentials is
// used (the SDK and the CLI use it): it is a forwardproof.ConnSigner,
// which signs each call with the key presented on the connection gRPC
// sends it on.
type Live struct {
	src Source
	rev *Revocation
	log *slog.Logger

	mu    sync.Mutex
	conns map[*trackedConn]struct{}
	// presentedOn maps a connection we dialled (the address of the first
	// element of its handshake's PeerCertificates, which the AuthInfo
	// gRPC keeps shares) to the Material we presented on it.
	presentedOn sync.Map

	stop chan struct{}
	done chan struct{}
	once sync.Once
}

// NewLive uses src and rev (nil: nothing is revoked). It owns them: Close
// closes them. log (nil: none) receives handshake failures and closed
// connections.
func NewLive(src Source, rev *Revocation, log *slog.Logger) *Live {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	l := &Live{src: src, rev: rev, log: log, conns: map[*trackedConn]struct{}{}, stop: make(chan struct{}), done: make(chan struct{})}
	go l.follow()
	return l
}

// Current is the identity in force.
func (l *Live) Current() *Material { return l.src.Current() }

// Source is the Source l follows.
func (l *Live) Source() Source { return l.src }

// Roots is the current trust anchors as a pool.
func (l *Live) Roots() *x509.CertPool { return l.src.Current().Pool() }

// Revoked says whether a verified chain is revoked, and why.
func (l *Live) Revoked(chain []*x509.Certificate) (string, bool) { return l.rev.Revoked(chain) }

// Reload re-reads the source (when it reads files) and the revocation
// lists now: SIGHUP.
func (l *Live) Reload() error {
	var errs []error
	if r, ok := l.src.(interface{ Reload() error }); ok {
		errs = append(errs, r.Reload())
	}
	errs = append(errs, l.rev.Reload())
	return errors.Join(errs...)
}

// Close stops following the source and revocation, and closes them.
// Connections stay open.
func (l *Live) Close() error {
	l.once.Do(func() { close(l.stop) })
	<-l.done
	l.mu.Lock()
	for c := range l.conns {
		c.timer.Stop()
		if c.own != nil {
			c.own.Stop()
		}
	}
	l.mu.Unlock()
	return errors.Join(l.src.Close(), l.rev.Close())
}

func (l *Live) follow() {
	defer close(l.done)
	for {
		select {
		case <-l.stop:
			return
		case <-l.src.Changes():
			// New roots may change which CRLs are signed by them.
			_ = l.rev.Reload()
			l.sweep("the trust anchors changed")
		case <-l.rev.Changes():
			l.sweep("the revocation lists changed")
		}
	}
}

// sweep closes every tracked connection whose chain no longer verifies or
// is revoked.
func (l *Live) sweep(why string) {
	l.mu.Lock()
	conns := make([]*trackedConn, 0, len(l.conns))
	for c := range l.conns {
		conns = append(conns, c)
	}
	l.mu.Unlock()
	m := l.src.Current()
	for _, c := range conns {
		if reason := l.recheck(m, c); reason != "" {
			l.cut(c, reason+" ("+why+")")
		}
	}
}

// recheck says why c's chain no longer holds ("" if it does).
func (l *Live) recheck(m *Material, c *trackedConn) string {
	leaf := c.chain[0]
	inter := x509.NewCertPool()
	for _, ic := range c.chain[1:] {
		inter.AddCert(ic)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: m.Pool(), Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{c.usage}}); err != nil {
		return explainVerify(err, c.peerRole())
	}
	if reason, ok := l.rev.Revoked(c.chain); ok {
		return "revoked: " + reason
	}
	return ""
}

// PeerError is a peer refused by keybroker's checks; Reason says why in
// words.
type PeerError struct {
	Reason string
	// Err is the TLS or X.509 error behind Reason, if any.
	Err error
}

func (e *PeerError) Error() string { return e.Reason }

// ErrNotGRPC is behind the PeerError of a server that completed the TLS
// handshake without offering HTTP/2 (ALPN h2): not a gRPC port — most
// often a node's operations port.
var ErrNotGRPC = errors.New("identity: the server does not speak gRPC")

func (e *PeerError) Unwrap() error { return e.Err }

// AcceptKinds accepts a server of one of kinds.
func AcceptKinds(kinds ...Kind) func(Identity) error {
	return func(id Identity) error {
		if slices.Contains(kinds, id.Kind) {
			return nil
		}
		want := make([]string, len(kinds))
		for i, k := range kinds {
			want[i] = string(k)
		}
		return fmt.Errorf("dialled %s %s certificate (%s) as %s: a keybroker server here must be %s", article(id.Kind), id.Kind, id,
			strings.Join(want, " or "), strings.Join(want, " or "))
	}
}

func article(k Kind) string {
	if k == Admin || k == Edge {
		return "an"
	}
	return "a"
}

// AcceptID accepts exactly the server want.
func AcceptID(want Identity) func(Identity) error {
	return func(id Identity) error {
		if id != want {
			return fmt.Errorf("dialled %s but the server is %s", want, id)
		}
		return nil
	}
}

// ServerTLS is a TLS 1.3 server configuration presenting the current
// certificate and requiring a client certificate verified against the
// current roots with clientAuth (VerifiedChains is filled), not revoked. It negotiates no ALPN protocol (the operations endpoints);
// gRPC servers use ServerCredentials.
func (l *Live) ServerTLS() *tls.Config { return l.serverTLS(nil) }

func (l *Live) serverTLS(protos []string) *tls.Config {
	gc := &genCache{}
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		NextProtos: protos,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			return gc.get(l, protos), nil
		},
	}
}

// PublicServerTLS is a TLS server configuration (1.2 and later, as AWS
// clients need) presenting the current certificate and asking for no
// client certificate: for front-ends whose callers authenticate otherwise
// (the AWS KMS API's Signature Version 4).
func (l *Live) PublicServerTLS() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return l.src.Current().Certificate, nil
		},
	}
}

// genCache holds the server configuration built for one Material.
type genCache struct {
	mu  sync.Mutex
	m   *Material
	cfg *tls.Config
}

func (gc *genCache) get(l *Live, protos []string) *tls.Config {
	m := l.src.Current()
	gc.mu.Lock()
	defer gc.mu.Unlock()
	if gc.m == m {
		return gc.cfg
	}
	gc.m = m
	gc.cfg = &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{*m.Certificate},
		ClientCAs:    m.Pool(),
		ClientAuth:   tls.RequireAndVerifyClientCert,
		NextProtos:   protos,
		// A resumed session would skip the client certificate checks.
		SessionTicketsDisabled: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			return l.verifyClient(m, cs)
		},
	}
	return gc.cfg
}

// verifyClient completes Go's verification of a client certificate
// (chain to m's roots, clientAuth usage) with revocation. The SPIFFE id
// and its trust domain are checked per call (FromPeer), where a refusal
// is audited with the operation it refused.
func (l *Live) verifyClient(_ *Material, cs tls.ConnectionState) error {
	if len(cs.VerifiedChains) == 0 || len(cs.VerifiedChains[0]) == 0 {
		return &PeerError{Reason: "the client presented no verified certificate"}
	}
	chain := cs.VerifiedChains[0]
	if reason, ok := l.rev.Revoked(chain); ok {
		return &PeerError{Reason: "the client certificate is revoked: " + reason}
	}
	return nil
}

// ClientTLS is a TLS 1.3 client configuration presenting the current
// certificate and verifying the server: its chain against the current
// roots with serverAuth, its SPIFFE id in the trust domain and taken by
// accept, not revoked, and its host name only when serverName is given.
func (l *Live) ClientTLS(accept func(Identity) error, serverName string) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		ServerName: serverName,
		// VerifyConnection below verifies the chain, by SPIFFE id
		// rather than host name.
		InsecureSkipVerify: true,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			m, err := l.clientMaterial()
			if err != nil {
				return nil, err
			}
			return m.Certificate, nil
		},
		VerifyConnection: func(cs tls.ConnectionState) error {
			_, err := l.verifyServer(cs.PeerCertificates, accept, serverName)
			return err
		},
	}
}

// clientMaterial is the current identity, refused here — where we can say
// why — rather than by the server when its certificate cannot serve as a
// client certificate.
func (l *Live) clientMaterial() (*Material, error) {
	m := l.src.Current()
	if p := ownProblem(m, x509.ExtKeyUsageClientAuth, time.Now(), false); p != "" {
		return nil, &PeerError{Reason: "our own certificate cannot be used: " + p}
	}
	return m, nil
}

// verifyServer verifies a server's certificates (leaf first) and returns
// the verified chain.
func (l *Live) verifyServer(certs []*x509.Certificate, accept func(Identity) error, serverName string) ([]*x509.Certificate, error) {
	if len(certs) == 0 {
		return nil, &PeerError{Reason: "the server presented no certificate"}
	}
	m := l.src.Current()
	leaf := certs[0]
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	chains, err := leaf.Verify(x509.VerifyOptions{Roots: m.Pool(), Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
	if err != nil {
		return nil, &PeerError{Reason: explainVerify(err, "server"), Err: err}
	}
	if err := CheckServerID(leaf, m.ID.TrustDomain, accept); err != nil {
		return nil, err
	}
	if reason, ok := l.rev.Revoked(chains[0]); ok {
		return nil, &PeerError{Reason: "the server certificate is revoked: " + reason}
	}
	if serverName != "" {
		if err := leaf.VerifyHostname(serverName); err != nil {
			return nil, &PeerError{Reason: explainVerify(err, "server"), Err: err}
		}
	}
	return chains[0], nil
}

// CheckServerID is the check of a server's identity that chain
// verification does not make: the leaf carries one keybroker SPIFFE id, of
// trust domain td when td is not empty, that accept (when not nil) takes.
// Its error is a *PeerError saying which.
func CheckServerID(leaf *x509.Certificate, td string, accept func(Identity) error) error {
	id, err := FromCertificate(leaf)
	if err != nil {
		return &PeerError{Reason: fmt.Sprintf("the server certificate %s carries no keybroker SPIFFE id: %v", describe(leaf), err), Err: err}
	}
	if td != "" && id.TrustDomain != td {
		return &PeerError{Reason: fmt.Sprintf("the server %s is not in trust domain %s", id, td)}
	}
	if accept != nil {
		if err := accept(id); err != nil {
			return &PeerError{Reason: err.Error(), Err: err}
		}
	}
	return nil
}

// ServerCredentials are gRPC server credentials over ServerTLS's checks
// (with ALPN h2), logging refused handshakes and tracking connections.
func (l *Live) ServerCredentials() credentials.TransportCredentials {
	return &liveCreds{TransportCredentials: credentials.NewTLS(l.serverTLS([]string{"h2"})), l: l, server: true}
}

// ClientCredentials are gRPC client credentials over ClientTLS's checks,
// logging failed handshakes (with the reason in the error too) and
// tracking connections.
func (l *Live) ClientCredentials(accept func(Identity) error, serverName string) credentials.TransportCredentials {
	creds, _ := l.DialCredentials(accept, serverName)
	return creds
}

// DialCredentials are ClientCredentials for one grpc.ClientConn, with the
// signer of its forward proofs: it signs with the key of the certificate
// last presented on that connection, so a proof made after our own
// certificate rotated still matches the chain the edge saw in its
// handshake (the central tier checks the proof against that chain). Use
// a pair per ClientConn.
func (l *Live) DialCredentials(accept func(Identity) error, serverName string) (credentials.TransportCredentials, crypto.Signer) {
	c := &liveCreds{TransportCredentials: credentials.NewTLS(l.ClientTLS(accept, serverName)), l: l, accept: accept, serverName: serverName,
		presented: new(atomic.Pointer[Material])}
	return c, liveSigner{l, c.presented}
}

// liveSigner signs with the key of the Material last presented on a
// connection, or the current one before any.
type liveSigner struct {
	l         *Live
	presented *atomic.Pointer[Material]
}

func (s liveSigner) material() *Material {
	if m := s.presented.Load(); m != nil {
		return m
	}
	return s.l.Current()
}

// SignerFor is the key of the certificate we presented on the connection
// whose handshake gave ai (forwardproof.ConnSigner): the Interceptor signs
// a call's proof with it once gRPC has chosen the connection, so a proof
// matches the chain the edge saw even while connections made before and
// after a rotation are both open. An unknown connection gets s itself.
func (s liveSigner) SignerFor(ai credentials.AuthInfo) crypto.Signer {
	if ti, ok := ai.(credentials.TLSInfo); ok && len(ti.State.PeerCertificates) > 0 {
		if m, ok := s.l.presentedOn.Load(&ti.State.PeerCertificates[0]); ok {
			return materialSigner{m.(*Material)}
		}
	}
	return s
}

// materialSigner signs with m's key.
type materialSigner struct{ m *Material }

func (s materialSigner) Public() crypto.PublicKey { return s.m.Certificate.Leaf.PublicKey }

func (s materialSigner) Sign(rand io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	k, ok := s.m.Certificate.PrivateKey.(crypto.Signer)
	if !ok {
		return nil, errors.New("identity: the private key cannot sign")
	}
	return k.Sign(rand, digest, opts)
}

func (s liveSigner) Public() crypto.PublicKey { return s.material().Certificate.Leaf.PublicKey }

func (s liveSigner) Sign(rand io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	k, ok := s.material().Certificate.PrivateKey.(crypto.Signer)
	if !ok {
		return nil, errors.New("identity: the private key cannot sign")
	}
	return k.Sign(rand, digest, opts)
}

type liveCreds struct {
	credentials.TransportCredentials
	l          *Live
	server     bool
	accept     func(Identity) error
	serverName string
	// presented is the Material of the last client handshake that
	// succeeded (shared by clones: one per ClientConn).
	presented *atomic.Pointer[Material]
}

func (c *liveCreds) Clone() credentials.TransportCredentials {
	cc := *c
	cc.TransportCredentials = c.TransportCredentials.Clone()
	return &cc
}

// ClientHandshake runs the TLS handshake itself (rather than through
// credentials.NewTLS) so that it knows which of our certificates it
// presented.
func (c *liveCreds) ClientHandshake(ctx context.Context, authority string, raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	cfg := c.l.ClientTLS(c.accept, c.serverName)
	cfg.NextProtos = []string{"h2"}
	if cfg.ServerName == "" { // SNI only: the server is verified by SPIFFE id
		host, _, err := net.SplitHostPort(authority)
		if err != nil {
			host = authority
		}
		cfg.ServerName = host
	}
	var presented *Material
	cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
		m, err := c.l.clientMaterial()
		if err != nil {
			return nil, err
		}
		presented = m
		return m.Certificate, nil
	}
	fail := func(err error) (net.Conn, credentials.AuthInfo, error) {
		reason := Explain(err)
		if isRemoteRefusal(err) {
			reason = c.l.refusedUs(err)
		}
		c.l.log.Warn("TLS handshake with the server failed", "server", authority, "reason", reason)
		return nil, nil, &PeerError{Reason: reason, Err: err}
	}
	conn := tls.Client(raw, cfg)
	if err := conn.HandshakeContext(ctx); err != nil {
		conn.Close()
		return fail(err)
	}
	st := conn.ConnectionState()
	if st.NegotiatedProtocol != "h2" {
		conn.Close()
		return fail(&PeerError{Reason: fmt.Sprintf("%s does not speak gRPC (no ALPN h2 in the TLS handshake): is it a keybroker node's operations port rather than its gRPC port?", authority),
			Err: ErrNotGRPC})
	}
	chain, err := c.l.verifyServer(st.PeerCertificates, c.accept, c.serverName)
	if err != nil { // the roots changed between the handshake and now
		conn.Close()
		return fail(err)
	}
	// A TLS 1.3 client finishes its handshake before the server has
	// checked its certificate: the server's verdict is the first thing it
	// sends, an alert or (a gRPC server speaks first) its HTTP/2
	// settings. Waiting for it here turns a refusal into a handshake
	// error that says why, rather than a broken pipe on the first write.
	first, err := readFirst(ctx, conn)
	if err != nil {
		conn.Close()
		return fail(err)
	}
	tc := c.l.track(conn, chain, x509.ExtKeyUsageServerAuth)
	tc.pre = first
	if presented != nil {
		if c.presented != nil {
			c.presented.Store(presented)
		}
		// The handshake's own slice: its first element's address names
		// this connection in the AuthInfo gRPC hands the signer.
		tc.presentedKey = &st.PeerCertificates[0]
		c.l.presentedOn.Store(tc.presentedKey, presented)
		c.l.retire(tc, presented)
	}
	info := credentials.TLSInfo{State: st, CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity}}
	if id, err := FromCertificate(chain[0]); err == nil {
		info.SPIFFEID = id.URL()
	}
	return tc, info, nil
}

// firstReadWait bounds how long a client waits for the server's first
// bytes: a server that waits for the client to speak first is not held
// up longer than this.
const firstReadWait = 3 * time.Second

// readFirst reads what the server sends first, within ctx's deadline and
// firstReadWait; a server silent that long is handed over as it is.
func readFirst(ctx context.Context, conn net.Conn) ([]byte, error) {
	d := time.Now().Add(firstReadWait)
	if cd, ok := ctx.Deadline(); ok && cd.Before(d) {
		d = cd
	}
	_ = conn.SetReadDeadline(d)
	defer conn.SetReadDeadline(time.Time{})
	buf := make([]byte, 16<<10)
	n, err := conn.Read(buf)
	if n > 0 {
		return buf[:n], nil
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() && ctx.Err() == nil {
		return nil, nil // a TLS read timeout leaves the connection usable
	}
	if err == nil {
		err = io.ErrNoProgress
	}
	return nil, err
}

func (c *liveCreds) ServerHandshake(raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	conn, ai, err := c.TransportCredentials.ServerHandshake(raw)
	if err != nil {
		level := slog.LevelWarn
		if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || strings.Contains(err.Error(), "connection reset") {
			level = slog.LevelDebug // a probe or a client that gave up
		}
		c.l.log.Log(context.Background(), level, "TLS handshake refused", "client", raw.RemoteAddr().String(), "reason", Explain(err))
		return nil, nil, err
	}
	ti, _ := ai.(credentials.TLSInfo)
	if len(ti.State.VerifiedChains) == 0 {
		conn.Close()
		return nil, nil, errors.New("identity: no verified client chain")
	}
	return c.l.track(conn, ti.State.VerifiedChains[0], x509.ExtKeyUsageClientAuth), ai, nil
}

// trackedConn is an authenticated connection, closed when its peer's
// chain expires or stops holding.
type trackedConn struct {
	net.Conn
	l     *Live
	chain []*x509.Certificate
	usage x509.ExtKeyUsage // the peer's: ServerAuth when we dialled it
	who   string
	timer *time.Timer
	// own retires a connection we dialled before our certificate on it
	// expires (retire); nil until set, under l.mu.
	own *time.Timer
	// presentedKey names the connection in presentedOn (we dialled it
	// and presented a certificate).
	presentedKey **x509.Certificate
	once         sync.Once
	pre          []byte // read before the connection was handed over, read first
}

func (c *trackedConn) peerRole() string {
	if c.usage == x509.ExtKeyUsageServerAuth {
		return "server"
	}
	return "client"
}

func (l *Live) track(conn net.Conn, chain []*x509.Certificate, usage x509.ExtKeyUsage) *trackedConn {
	c := &trackedConn{Conn: conn, l: l, chain: chain, usage: usage, who: describe(chain[0])}
	until := chain[0].NotAfter
	for _, cert := range chain[1:] {
		if cert.NotAfter.Before(until) {
			until = cert.NotAfter
		}
	}
	l.mu.Lock()
	l.conns[c] = struct{}{}
	// Closed an instant after NotAfter, when the certificate no longer
	// verifies.
	c.timer = time.AfterFunc(time.Until(until)+time.Second, func() {
		l.cut(c, fmt.Sprintf("the %s certificate expired at %s", c.peerRole(), until.UTC().Format(time.RFC3339)))
	})
	l.mu.Unlock()
	return c
}

// maxRetireMargin bounds how long before our certificate expires a
// connection we dialled with it is closed.
const maxRetireMargin = 5 * time.Minute

// retire closes c, a connection we dialled presenting own, a while before
// own expires — a quarter of the time it had left at the handshake, at
// most maxRetireMargin — if we hold a newer certificate by then, so that
// gRPC redials with it. Otherwise the server would cut the connection
// only after own expired, and meanwhile the forward proofs we sign on it
// name a chain the central tier no longer accepts. Without a newer
// certificate (the source has not rotated) the connection is left to the
// server: redialling would present the same one.
func (l *Live) retire(c *trackedConn, own *Material) {
	leaf := own.Certificate.Leaf
	if leaf == nil {
		return
	}
	margin := min(time.Until(leaf.NotAfter)/4, maxRetireMargin)
	if margin <= 0 {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, ok := l.conns[c]; !ok {
		return // already closed
	}
	c.own = time.AfterFunc(time.Until(leaf.NotAfter.Add(-margin)), func() {
		if cur := l.src.Current().Certificate.Leaf; cur == nil || cur.Equal(leaf) {
			return
		}
		c.once.Do(func() { // routine: logged at info, unlike cut
			l.log.Info("closing a connection before our certificate on it expires, to redial with the current one", "peer", c.who, "expires", leaf.NotAfter)
			l.untrack(c)
			c.Conn.Close()
		})
	})
}

// cut closes c for reason.
func (l *Live) cut(c *trackedConn, reason string) {
	c.once.Do(func() {
		l.log.Warn("closing an authenticated connection", "peer", c.who, "remote_addr", c.RemoteAddr().String(), "reason", reason)
		l.untrack(c)
		c.Conn.Close()
	})
}

func (l *Live) untrack(c *trackedConn) {
	l.mu.Lock()
	delete(l.conns, c)
	if c.own != nil {
		c.own.Stop()
	}
	l.mu.Unlock()
	if c.presentedKey != nil {
		l.presentedOn.Delete(c.presentedKey)
	}
	c.timer.Stop()
}

// Conns is how many authenticated connections are tracked (tests and
// metrics).
func (l *Live) Conns() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.conns)
}

func (c *trackedConn) Close() error {
	c.once.Do(func() { c.l.untrack(c) })
	return c.Conn.Close()
}

// Read says, when the server refuses our certificate after the handshake
// (TLS 1.3 clients finish before the server has checked them), what is
// wrong with it.
func (c *trackedConn) Read(b []byte) (int, error) {
	if len(c.pre) > 0 {
		n := copy(b, c.pre)
		c.pre = c.pre[n:]
		return n, nil
	}
	n, err := c.Conn.Read(b)
	if err != nil && c.usage == x509.ExtKeyUsageServerAuth && isRemoteRefusal(err) {
		reason := c.l.refusedUs(err)
		c.l.log.Warn("the server refused our certificate", "server", c.who, "reason", reason)
		return n, &PeerError{Reason: reason, Err: err}
	}
	return n, err
}
