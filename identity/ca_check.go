package identity

import (
	"crypto/x509"
	"fmt"
	"slices"
	"time"
)

// Finding is one thing Check says about a certificate.
type Finding struct {
	// Problem is true when keybroker refuses the certificate, or its peers
	// will, for this reason; false for a warning (more than the role
	// needs, or renewal due soon).
	Problem bool
	// Text says what is wrong and what to do, in words.
	Text string
}

func (f Finding) String() string {
	if f.Problem {
		return "problem: " + f.Text
	}
	return "warning: " + f.Text
}

// Check says what is wrong with leaf as a keybroker identity at now: a
// missing or malformed SPIFFE id, a CA certificate, a time outside its
// validity, a key usage TLS 1.3 cannot sign with, an extended key usage
// its kind needs and lacks (an edge with serverAuth only is refused by
// the central tier, which it dials), and, as warnings, what it carries
// beyond its role (serverAuth or host names on a client) and a renewal
// due (less than a third of its lifetime left). It does not verify the
// chain: see CheckChain.
func Check(leaf *x509.Certificate, now time.Time) []Finding {
	var out []Finding
	problem := func(format string, args ...any) {
		out = append(out, Finding{Problem: true, Text: fmt.Sprintf(format, args...)})
	}
	warn := func(format string, args ...any) {
		out = append(out, Finding{Text: fmt.Sprintf(format, args...)})
	}
	id, idErr := FromCertificate(leaf)
	if idErr != nil {
		problem("no keybroker SPIFFE id: a certificate carries exactly one URI SAN spiffe://TRUST-DOMAIN/KIND/NAME, KIND one of client, admin, edge, central (%v)", idErr)
	}
	if leaf.IsCA {
		problem("it is a CA certificate, not one for a node or client")
	}
	switch {
	case now.Before(leaf.NotBefore):
		problem("not valid until %s (is this host's clock right?)", leaf.NotBefore.UTC().Format(time.RFC3339))
	case now.After(leaf.NotAfter):
		problem("expired at %s: renew it (keybroker cert renew)", leaf.NotAfter.UTC().Format(time.RFC3339))
	default:
		life, left := leaf.NotAfter.Sub(leaf.NotBefore), leaf.NotAfter.Sub(now)
		if left < life/3 {
			warn("expires in %s, at %s: renew it (keybroker cert renew)", left.Round(time.Minute), leaf.NotAfter.UTC().Format(time.RFC3339))
		}
	}
	if leaf.KeyUsage != 0 && leaf.KeyUsage&x509.KeyUsageDigitalSignature == 0 {
		problem("key usage lacks digitalSignature: a TLS 1.3 handshake signs with the key, so peers refuse it")
	}
	if idErr != nil {
		return out
	}
	has := func(u x509.ExtKeyUsage) bool {
		return len(leaf.ExtKeyUsage) == 0 || slices.Contains(leaf.ExtKeyUsage, x509.ExtKeyUsageAny) || slices.Contains(leaf.ExtKeyUsage, u)
	}
	switch id.Kind {
	case Edge:
		if !has(x509.ExtKeyUsageServerAuth) {
			problem("an edge certificate lacks the serverAuth extended key usage: clients refuse the edge (tls: bad certificate)")
		}
		if !has(x509.ExtKeyUsageClientAuth) {
			problem("an edge certificate lacks the clientAuth extended key usage: the edge dials the central tier, which refuses it (tls: bad certificate)")
		}
	case Central:
		if !has(x509.ExtKeyUsageServerAuth) {
			problem("a central certificate lacks the serverAuth extended key usage: edges and clients refuse the central tier (tls: bad certificate)")
		}
		if !has(x509.ExtKeyUsageClientAuth) {
			warn("a central certificate without the clientAuth extended key usage cannot dial another central node")
		}
	case Client, Admin:
		if !has(x509.ExtKeyUsageClientAuth) {
			problem("a %s certificate lacks the clientAuth extended key usage: every node refuses it (tls: bad certificate)", id.Kind)
		}
		if len(leaf.ExtKeyUsage) > 0 && has(x509.ExtKeyUsageServerAuth) {
			warn("a %s certificate also allows serverAuth, which a %s never needs", id.Kind, id.Kind)
		}
		if len(leaf.DNSNames)+len(leaf.IPAddresses) > 0 {
			warn("a %s certificate carries DNS names or IP addresses, which a %s never needs", id.Kind, id.Kind)
		}
	}
	if len(leaf.ExtKeyUsage) == 0 {
		warn("no extended key usage: accepted for every use, more than a %s needs", id.Kind)
	}
	if id.Kind.Serves() && len(leaf.DNSNames)+len(leaf.IPAddresses) == 0 {
		warn("a %s certificate with no DNS names or IP addresses: peers that check the host they dial refuse it", id.Kind)
	}
	return out
}

// CheckChain verifies leaf (with any intermediates) against roots at now,
// for the usage its kind needs, and says why it fails in words: unknown
// CA, expired, wrong usage. It returns nil when the chain verifies.
func CheckChain(leaf *x509.Certificate, intermediates []*x509.Certificate, roots []*x509.Certificate, now time.Time) *Finding {
	pool, inter := x509.NewCertPool(), x509.NewCertPool()
	for _, r := range roots {
		pool.AddCert(r)
	}
	for _, c := range intermediates {
		inter.AddCert(c)
	}
	usages := []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	if id, err := FromCertificate(leaf); err == nil {
		usages = ExtKeyUsages(id.Kind)
		if id.Kind == Central {
			// Needed to serve; clientAuth is only a warning (see Check).
			usages = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		}
	}
	var errs []string
	for _, u := range usages {
		_, err := leaf.Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{u}})
		if err != nil {
			errs = append(errs, chainError(err))
		}
	}
	if len(errs) == 0 {
		return nil
	}
	return &Finding{Problem: true, Text: errs[0]}
}

func chainError(err error) string {
	switch e := err.(type) {
	case x509.UnknownAuthorityError:
		return "not signed by the CA given (unknown authority): issue it from this CA, or give the CA that signed it"
	case x509.CertificateInvalidError:
		switch e.Reason {
		case x509.Expired:
			return "the certificate or its CA is expired or not yet valid: " + e.Error()
		case x509.IncompatibleUsage:
			return "the chain does not allow the usage its kind needs: " + e.Error()
		case x509.CANotAuthorizedForThisName:
			return "the CA may not vouch for this SPIFFE id (name constraints): " + e.Error()
		}
	}
	return "the chain does not verify: " + err.Error()
}
