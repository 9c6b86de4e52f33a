package server

import (
	"bytes"
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"fmt"
	"sync"
	"time"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/identity"
	"github.com/keybroker/keybroker/internal/forwardproof"
)

// DefaultProofWindow is how far a forward proof's issued_at may be from
// the central tier's clock, either side.
const DefaultProofWindow = 2 * time.Minute

// maxNonces bounds the replay cache. A forward that would overflow it is
// refused (the edge's client retries): an unbounded cache is a memory
// attack, a forgetful one a replay.
const maxNonces = 1 << 20

// proofError is a refused proof: the reason goes to the audit line.
type proofError struct{ reason string }

func (e *proofError) Error() string { return e.reason }

var errReplay = refused("replay: this proof was used before")

func refused(format string, args ...any) error { return &proofError{fmt.Sprintf(format, args...)} }

// proofVerifier checks forward proofs.
type proofVerifier struct {
	roots  *x509.CertPool
	td     string
	window time.Duration
	now    func() time.Time
	seen   *replayCache
	chains chainCache
}

// verify returns the identity that made the forwarded call r to edge.
func (v *proofVerifier) verify(edge identity.Identity, r *kbv1.ForwardRequest) (identity.Identity, error) {
	if v.roots == nil {
		return identity.Identity{}, refused("this central node has no client CA bundle to verify forwarding clients against")
	}
	chain := r.GetClientChain()
	switch {
	case len(chain) == 0:
		return identity.Identity{}, refused("bad chain: the edge passed no client certificate chain")
	case len(chain) > maxChainCerts:
		// A client presents its leaf and a few intermediates; a longer
		// chain only makes path building cost more.
		return identity.Identity{}, refused("bad chain: %d certificates, more than %d", len(chain), maxChainCerts)
	}
	if len(r.GetProof()) == 0 {
		return identity.Identity{}, refused("no proof: the client did not sign this call")
	}
	now := v.now()
	leaf, err := v.chains.verify(chain, now, v.verifyChain)
	if err != nil {
		return identity.Identity{}, err
	}
	who := leaf.who
	claims, err := forwardproof.Parse(r.GetProof(), leaf.pub)
	if err != nil {
		return identity.Identity{}, refused("bad signature: %v", err)
	}
	sum := sha256.Sum256(r.GetRequest())
	switch {
	case claims.GetMethod() != r.GetMethod():
		return identity.Identity{}, refused("method mismatch: %s signed %q, the edge forwarded %q", who, claims.GetMethod(), r.GetMethod())
	case !bytes.Equal(claims.GetRequestSha256(), sum[:]):
		return identity.Identity{}, refused("digest mismatch: the forwarded request is not the one %s signed", who)
	case claims.GetAudience() != edge.String():
		return identity.Identity{}, refused("wrong audience: %s signed for %q, not for %s", who, claims.GetAudience(), edge)
	}
	at := claims.GetIssuedAt().AsTime()
	if d := now.Sub(at); d > v.window || d < -v.window {
		return identity.Identity{}, refused("stale: the proof was issued at %s, %s from now (window %s)", at.UTC().Format(time.RFC3339), d.Round(time.Second), v.window)
	}
	if err := v.seen.add([16]byte(claims.GetNonce()), at.Add(v.window), now); err != nil {
		return identity.Identity{}, err
	}
	return who, nil
}

// verifiedLeaf is what a verified chain establishes.
type verifiedLeaf struct {
	who identity.Identity
	pub crypto.PublicKey
	// until is the earliest NotAfter of the chain: the cached result
	// holds no longer.
	until time.Time
}

// verifyChain verifies a client certificate chain (leaf first, DER)
// against the client CA bundle at now, for client authentication, and
// returns the client or admin of this trust domain its leaf names.
func (v *proofVerifier) verifyChain(chain [][]byte, now time.Time) (verifiedLeaf, error) {
	certs := make([]*x509.Certificate, len(chain))
	for i, der := range chain {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return verifiedLeaf{}, refused("bad chain: certificate %d: %v", i, err)
		}
		certs[i] = c
	}
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	chains, err := certs[0].Verify(x509.VerifyOptions{Roots: v.roots, Intermediates: inter, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	if err != nil {
		return verifiedLeaf{}, refused("bad chain: %v", err)
	}
	who, err := identity.FromCertificate(certs[0])
	switch {
	case err != nil:
		return verifiedLeaf{}, refused("bad chain: %v", err)
	case who.TrustDomain != v.td:
		return verifiedLeaf{}, refused("bad chain: %s is not in trust domain %s", who, v.td)
	case who.Kind != identity.Client && who.Kind != identity.Admin:
		return verifiedLeaf{}, refused("bad chain: edges forward for clients and admins, not for %s", who)
	}
	until := certs[0].NotAfter
	for _, c := range chains[0] {
		if c.NotAfter.Before(until) {
			until = c.NotAfter
		}
	}
	return verifiedLeaf{who: who, pub: certs[0].PublicKey, until: until}, nil
}

// maxChainCerts bounds the certificates of a forwarded client chain.
const maxChainCerts = 8

// maxChains bounds the verified-chain cache.
const maxChains = 4096

// chainCache remembers verified chains, by the SHA-256 of their DER, until
// the first of their certificates expires, so a busy client costs one
// chain verification, not one per forwarded call. Refusals are not cached.
type chainCache struct {
	mu sync.Mutex
	m  map[[32]byte]verifiedLeaf
}

func (cc *chainCache) verify(chain [][]byte, now time.Time, verify func([][]byte, time.Time) (verifiedLeaf, error)) (verifiedLeaf, error) {
	h := sha256.New()
	for _, der := range chain {
		var n [4]byte
		binary.BigEndian.PutUint32(n[:], uint32(len(der)))
		h.Write(n[:])
		h.Write(der)
	}
	var k [32]byte
	h.Sum(k[:0])
	cc.mu.Lock()
	l, ok := cc.m[k]
	cc.mu.Unlock()
	if ok && now.Before(l.until) {
		return l, nil
	}
	l, err := verify(chain, now)
	if err != nil {
		return verifiedLeaf{}, err
	}
	cc.mu.Lock()
	defer cc.mu.Unlock()
	if cc.m == nil || len(cc.m) >= maxChains {
		cc.m = map[[32]byte]verifiedLeaf{} // simple bound: start over
	}
	cc.m[k] = l
	return l, nil
}

// replayCache remembers nonces until the proofs that carried them are no
// longer fresh.
type replayCache struct {
	mu    sync.Mutex
	m     map[[16]byte]time.Time // nonce → when its proof goes stale
	prune int                    // sweep for expired nonces at this size
}

func newReplayCache() *replayCache { return &replayCache{m: map[[16]byte]time.Time{}, prune: 1024} }

// add records nonce until expires, refusing one seen before, or any when
// the cache is full of live nonces.
func (r *replayCache) add(nonce [16]byte, expires, now time.Time) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.m[nonce]; ok {
		return errReplay
	}
	if len(r.m) >= r.prune {
		for n, exp := range r.m {
			if now.After(exp.Add(time.Second)) {
				delete(r.m, n)
			}
		}
		r.prune = max(1024, 2*len(r.m))
	}
	if len(r.m) >= maxNonces {
		return refused("replay cache full: %d live proofs; retry", maxNonces)
	}
	r.m[nonce] = expires
	return nil
}
