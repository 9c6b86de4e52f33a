package identity

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"
)

// Explain says in words why a TLS handshake failed: the checks of Live
// (PeerError), Go's certificate verification (unknown CA, expired, wrong
// usage, host name), and the alerts a peer sends.
func Explain(err error) string {
	var pe *PeerError
	if errors.As(err, &pe) {
		return pe.Reason
	}
	var ve *tls.CertificateVerificationError
	if errors.As(err, &ve) {
		// Go verified a client certificate for us (server side).
		return explainVerify(ve.Err, "client")
	}
	msg := err.Error()
	switch {
	case strings.Contains(msg, "client didn't provide a certificate"):
		return "the client presented no certificate: keybroker requires a client certificate on every port"
	case strings.Contains(msg, "does not look like a TLS handshake"):
		return "the peer does not speak TLS: " + msg
	case isRemoteRefusal(err):
		return "the peer refused our certificate (" + msg + "); its log says why"
	}
	return msg
}

// explainVerify words an X.509 verification error of a peer certificate;
// role is the peer's: "client" or "server".
func explainVerify(err error, role string) string {
	var (
		ua  x509.UnknownAuthorityError
		ci  x509.CertificateInvalidError
		he  x509.HostnameError
		sys x509.SystemRootsError
	)
	switch {
	case errors.As(err, &ua):
		issuer := ""
		if ua.Cert != nil {
			issuer = ua.Cert.Issuer.String()
		}
		return fmt.Sprintf("the %s certificate %s is signed by a CA not in tls.ca (issuer %q)", role, describe(ua.Cert), issuer)
	case errors.As(err, &ci):
		switch ci.Reason {
		case x509.Expired:
			if ci.Cert != nil && time.Now().Before(ci.Cert.NotBefore) {
				return fmt.Sprintf("the %s certificate %s is not valid until %s", role, describe(ci.Cert), ci.Cert.NotBefore.UTC().Format(time.RFC3339))
			}
			at := ""
			if ci.Cert != nil {
				at = " at " + ci.Cert.NotAfter.UTC().Format(time.RFC3339)
			}
			return fmt.Sprintf("the %s certificate %s expired%s", role, describe(ci.Cert), at)
		case x509.IncompatibleUsage:
			if role == "client" {
				return fmt.Sprintf("the client certificate %s has no clientAuth extended key usage; a keybroker client, admin or edge certificate needs it", describe(ci.Cert))
			}
			return fmt.Sprintf("the server certificate %s has no serverAuth extended key usage; a keybroker central or edge certificate needs it", describe(ci.Cert))
		}
		return fmt.Sprintf("the %s certificate %s is not valid: %v", role, describe(ci.Cert), err)
	case errors.As(err, &he):
		return fmt.Sprintf("the %s certificate %s does not name host %s (DNS SANs %v, IP SANs %v)", role, describe(he.Certificate), he.Host,
			he.Certificate.DNSNames, he.Certificate.IPAddresses)
	case errors.As(err, &sys):
		return fmt.Sprintf("the %s certificate could not be verified: %v", role, err)
	}
	return fmt.Sprintf("the %s certificate could not be verified: %v", role, err)
}

// describe names a certificate by its SPIFFE id (else its subject) and
// serial.
func describe(c *x509.Certificate) string {
	if c == nil {
		return "(none)"
	}
	name := c.Subject.String()
	for _, u := range c.URIs {
		if u.Scheme == "spiffe" {
			name = u.String()
			break
		}
	}
	return fmt.Sprintf("%s (serial %s)", name, c.SerialNumber.Text(16))
}

// remoteRefusals are the alerts a server sends about our certificate.
var remoteRefusals = []string{"bad certificate", "certificate required", "unknown certificate authority",
	"certificate expired", "certificate revoked", "unsupported certificate", "access denied"}

func isRemoteRefusal(err error) bool {
	var op *net.OpError
	if !errors.As(err, &op) || op.Op != "remote error" {
		return false
	}
	msg := op.Err.Error()
	for _, r := range remoteRefusals {
		if strings.Contains(msg, r) {
			return true
		}
	}
	return false
}

// refusedUs explains a server's refusal of our certificate: what is wrong
// with it if we can tell, else what the server may hold against it.
func (l *Live) refusedUs(err error) string {
	m := l.src.Current()
	if p := ownProblem(m, x509.ExtKeyUsageClientAuth, time.Now(), true); p != "" {
		return fmt.Sprintf("the server refused our certificate (%v): %s", err, p)
	}
	return fmt.Sprintf("the server refused our certificate %s (%v): it looks valid here, so the server holds it revoked, "+
		"does not trust its CA, or wants another trust domain; the server's log says which", describe(m.Certificate.Leaf), err)
}

// ownProblem says what is wrong with our own certificate for usage ("" if
// nothing): expired or not yet valid, without the usage, or (withChain)
// not chained to our own trust anchors.
func ownProblem(m *Material, usage x509.ExtKeyUsage, now time.Time, withChain bool) string {
	leaf := m.Certificate.Leaf
	switch {
	case now.After(leaf.NotAfter):
		return fmt.Sprintf("our certificate %s expired at %s", describe(leaf), leaf.NotAfter.UTC().Format(time.RFC3339))
	case now.Before(leaf.NotBefore):
		return fmt.Sprintf("our certificate %s is not valid until %s", describe(leaf), leaf.NotBefore.UTC().Format(time.RFC3339))
	case !hasUsage(leaf, usage):
		return fmt.Sprintf("our certificate %s has no %s extended key usage; %s", describe(leaf), usageName(usage), usageNeed(usage))
	}
	if withChain {
		inter := x509.NewCertPool()
		for _, der := range m.Certificate.Certificate[1:] {
			if c, err := x509.ParseCertificate(der); err == nil {
				inter.AddCert(c)
			}
		}
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: m.Pool(), Intermediates: inter, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
			return fmt.Sprintf("our certificate %s does not chain to our own tls.ca: %v", describe(leaf), err)
		}
	}
	return ""
}

// hasUsage follows Go's verifier: no extended key usage at all allows
// any.
func hasUsage(c *x509.Certificate, usage x509.ExtKeyUsage) bool {
	if len(c.ExtKeyUsage) == 0 && len(c.UnknownExtKeyUsage) == 0 {
		return true
	}
	for _, u := range c.ExtKeyUsage {
		if u == usage || u == x509.ExtKeyUsageAny {
			return true
		}
	}
	return false
}

func usageName(u x509.ExtKeyUsage) string {
	if u == x509.ExtKeyUsageServerAuth {
		return "serverAuth"
	}
	return "clientAuth"
}

func usageNeed(u x509.ExtKeyUsage) string {
	if u == x509.ExtKeyUsageServerAuth {
		return "a keybroker central or edge certificate needs it (clients dial it)"
	}
	return "a keybroker client, admin or edge certificate needs it (it dials a keybroker node)"
}

// Role is what a process does with its certificate.
type Role int

// Roles.
const (
	// RoleCentral serves: serverAuth.
	RoleCentral Role = iota + 1
	// RoleEdge serves clients and dials the central tier: serverAuth
	// and clientAuth.
	RoleEdge
	// RoleClient dials nodes (SDK, CLI): clientAuth.
	RoleClient
)

func (r Role) String() string {
	switch r {
	case RoleCentral:
		return "central"
	case RoleEdge:
		return "edge"
	default:
		return "client"
	}
}

// CheckSelf refuses a process's own certificate that cannot serve its
// role, saying why: of the wrong kind for a node, not want (when want is
// not zero), or without a usage the role needs; and for a node, expired
// or not chained to its own trust anchors with that usage. (A client's
// certificate may be signed by a CA its own bundle does not hold, and an
// expired one may be about to be rotated: each handshake refuses it then,
// saying why.)
func CheckSelf(m *Material, role Role, want Identity) error {
	leaf := m.Certificate.Leaf
	if want != (Identity{}) && m.ID != want {
		return fmt.Errorf("tls.cert is %s; this %s is %s", m.ID, role, want)
	}
	switch {
	case role == RoleCentral && m.ID.Kind != Central:
		return fmt.Errorf("tls.cert is %s, a %s certificate; a central node needs a certificate of kind central", m.ID, m.ID.Kind)
	case role == RoleEdge && m.ID.Kind != Edge:
		return fmt.Errorf("tls.cert is %s, a %s certificate; an edge needs a certificate of kind edge", m.ID, m.ID.Kind)
	}
	var usages []x509.ExtKeyUsage
	switch role {
	case RoleCentral:
		usages = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	case RoleEdge:
		usages = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
	default:
		usages = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	}
	now := time.Now()
	for _, u := range usages {
		if !hasUsage(leaf, u) {
			why := usageNeed(u)
			if role == RoleEdge {
				why = "an edge certificate needs serverAuth (clients dial it) and clientAuth (it dials the central tier)"
			}
			return fmt.Errorf("tls.cert %s has no %s extended key usage; %s", describe(leaf), usageName(u), why)
		}
		if role == RoleClient {
			continue
		}
		if p := ownProblem(m, u, now, true); p != "" {
			return fmt.Errorf("tls.cert: %s", strings.TrimPrefix(p, "our certificate "))
		}
	}
	return nil
}
