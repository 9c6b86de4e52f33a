package server

import (
	"bytes"
	"context"
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/broker/store"
	"github.com/keybroker/keybroker/identity"
	"github.com/keybroker/keybroker/internal/forwardproof"
)

// DefaultProofWindow is how far a forward proof's issued_at may be from
// the central tier's clock, either side.
const DefaultProofWindow = 2 * time.Minute

// maxNonces bounds the replay cache. A forward that would overflow it is
// refused Unavailable (the edge's client retries): an unbounded cache is a
// memory attack, a forgetful one a replay.
const maxNonces = 1 << 20

// proofError is a refused proof: the reason goes to the audit line.
type proofError struct{ reason string }

func (e *proofError) Error() string { return e.reason }

var errReplay = refused("replay: this proof was used before")

// errReplayFull is a proof refused because the replay cache is full of
// live nonces: nothing is wrong with it, and a retry once older proofs go
// stale succeeds, so the caller gets a retryable code, not
// PermissionDenied.
var errReplayFull = refused("replay cache full of live proofs; retry")

// errNonceUnrecorded is a proof refused because the store the central
// nodes share could not record its nonce (etcd unreachable): it could
// otherwise be spent again at another central. The client may retry.
var errNonceUnrecorded = refused("the proof's nonce could not be recorded across the central tier; retry")

func refused(format string, args ...any) error { return &proofError{fmt.Sprintf(format, args...)} }

// proofVerifier checks forward proofs.
type proofVerifier struct {
	roots   func() *x509.CertPool // nil: no bundle, every forward refused
	revoked func([]*x509.Certificate) (string, bool)
	td      string
	window  time.Duration
	now     func() time.Time
	seen    *replayCache
	chains  chainCache
	// claim, with several centrals on one store, spends a nonce across all
	// of them (store.Claimer); nil with a store of one node.
	claim store.Claimer
	log   *slog.Logger
}

// verifiedProof is what a valid forward proof establishes: the client
// that made the call, and the nonce to record (record) once the call is
// let run.
type verifiedProof struct {
	who     identity.Identity
	nonce   [forwardproof.NonceSize]byte
	expires time.Time // when the proof goes stale
}

// verify checks that r carries a proof, by a client the CA bundle
// vouches for, of exactly this call made to edge, recently and not seen
// before. It does not record the nonce: record does, once the edge's
// right to forward the call has been decided, so that a refused forward
// does not spend the client's proof nor fill the replay cache.
func (v *proofVerifier) verify(edge identity.Identity, r *kbv1.ForwardRequest) (verifiedProof, error) {
	var roots *x509.CertPool
	if v.roots != nil {
		roots = v.roots()
	}
	if roots == nil {
		return verifiedProof{}, refused("this central node has no client CA bundle to verify forwarding clients against")
	}
	chain := r.GetClientChain()
	switch {
	case len(chain) == 0:
		return verifiedProof{}, refused("bad chain: the edge passed no client certificate chain")
	case len(chain) > maxChainCerts:
		// A client presents its leaf and a few intermediates; a longer
		// chain only makes path building cost more.
		return verifiedProof{}, refused("bad chain: %d certificates, more than %d", len(chain), maxChainCerts)
	}
	if len(r.GetProof()) == 0 {
		return verifiedProof{}, refused("no proof: the client did not sign this call")
	}
	now := v.now()
	leaf, err := v.chains.verify(chain, now, roots, v.verifyChain)
	if err != nil {
		return verifiedProof{}, err
	}
	// Revocation is checked on every forward, cached chain or not: a
	// revocation takes effect at the next call.
	if v.revoked != nil {
		if reason, ok := v.revoked(leaf.chain); ok {
			return verifiedProof{}, refused("revoked: %s", reason)
		}
	}
	who := leaf.who
	claims, err := forwardproof.Parse(r.GetProof(), leaf.pub)
	if err != nil {
		return verifiedProof{}, refused("bad signature: %v", err)
	}
	sum := sha256.Sum256(r.GetRequest())
	switch {
	case claims.GetMethod() != r.GetMethod():
		return verifiedProof{}, refused("method mismatch: %s signed %q, the edge forwarded %q", who, claims.GetMethod(), r.GetMethod())
	case !bytes.Equal(claims.GetRequestSha256(), sum[:]):
		return verifiedProof{}, refused("digest mismatch: the forwarded request is not the one %s signed", who)
	case claims.GetAudience() != edge.String():
		return verifiedProof{}, refused("wrong audience: %s signed for %q, not for %s", who, claims.GetAudience(), edge)
	}
	at := claims.GetIssuedAt().AsTime()
	if d := now.Sub(at); d > v.window || d < -v.window {
		return verifiedProof{}, refused("stale: the proof was issued at %s, %s from now (window %s)", at.UTC().Format(time.RFC3339), d.Round(time.Second), v.window)
	}
	p := verifiedProof{who: who, nonce: [forwardproof.NonceSize]byte(claims.GetNonce()), expires: at.Add(v.window)}
	if v.seen.has(p.nonce) {
		return verifiedProof{}, errReplay
	}
	return p, nil
}

// record spends p's nonce: the call it proves is about to run. It fails
// with errReplay when another forward spent it meanwhile — at this node
// or, with a shared store, at another central — with errReplayFull when
// the replay cache is full of live nonces, and with errNonceUnrecorded
// when the shared store cannot record it.
func (v *proofVerifier) record(ctx context.Context, p verifiedProof) error {
	now := v.now()
	if err := v.seen.add(p.nonce, p.expires, now); err != nil || v.claim == nil {
		return err
	}
	err := v.claim.Claim(ctx, "forward-nonces", hex.EncodeToString(p.nonce[:]), p.expires.Sub(now))
	switch {
	case errors.Is(err, store.ErrConflict):
		return errReplay
	case err != nil:
		v.log.Warn("forward proof nonce not recorded in the store", "err", err)
		return errNonceUnrecorded
	}
	return nil
}

// verifiedLeaf is what a verified chain establishes.
type verifiedLeaf struct {
	who identity.Identity
	pub crypto.PublicKey
	// until is the earliest NotAfter of the chain: the cached result
	// holds no longer.
	until time.Time
	// chain is the verified chain, leaf first (revocation is checked on
	// it).
	chain []*x509.Certificate
	// roots is the bundle it was verified against: a cached result holds
	// only while that bundle is in force.
	roots *x509.CertPool
}

// verifyChain verifies a client certificate chain (leaf first, DER)
// against the client CA bundle roots at now, for client authentication,
// and returns the client or admin of this trust domain its leaf names.
func (v *proofVerifier) verifyChain(chain [][]byte, now time.Time, roots *x509.CertPool) (verifiedLeaf, error) {
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
	chains, err := certs[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: now,
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
	return verifiedLeaf{who: who, pub: certs[0].PublicKey, until: until, chain: chains[0], roots: roots}, nil
}

// maxChainCerts bounds the certificates of a forwarded client chain.
const maxChainCerts = 8

// maxChains bounds the verified-chain cache.
const maxChains = 4096

// chainCache remembers verified chains, by the SHA-256 of their DER, until
// the first of their certificates expires or the CA bundle changes, so a
// busy client costs one chain verification, not one per forwarded call.
// Refusals are not cached; revocation is checked on every call.
type chainCache struct {
	mu sync.Mutex
	m  map[[32]byte]verifiedLeaf
}

func (cc *chainCache) verify(chain [][]byte, now time.Time, roots *x509.CertPool, verify func([][]byte, time.Time, *x509.CertPool) (verifiedLeaf, error)) (verifiedLeaf, error) {
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
	if ok && now.Before(l.until) && l.roots == roots {
		return l, nil
	}
	l, err := verify(chain, now, roots)
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
//
// Expired nonces are swept when the map reaches prune entries (twice what
// the last sweep left, at least 1024, at most max), so a sweep costs
// amortized O(1) per add. A cache full of live nonces refuses new ones
// (errReplayFull) and sweeps again only once the oldest of them has gone
// stale, so a flood of proofs costs one sweep per expiry, not one per add.
type replayCache struct {
	mu    sync.Mutex
	m     map[[16]byte]time.Time // nonce → when its proof goes stale
	max   int                    // the most nonces held (maxNonces)
	prune int                    // sweep for expired nonces at this size
	// full, when the last sweep left the cache full, is the stale time of
	// the oldest nonce it kept: no sweep frees anything before then.
	full time.Time
}

// newReplayCache holds at most max nonces.
func newReplayCache(max int) *replayCache {
	return &replayCache{m: map[[16]byte]time.Time{}, max: max, prune: min(1024, max)}
}

// has says whether nonce was recorded and has not been swept.
func (r *replayCache) has(nonce [16]byte) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	_, ok := r.m[nonce]
	return ok
}

// add records nonce until expires, refusing one seen before (errReplay),
// or any when the cache is full of live nonces (errReplayFull).
func (r *replayCache) add(nonce [16]byte, expires, now time.Time) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.m[nonce]; ok {
		return errReplay
	}
	if len(r.m) >= r.prune && (r.full.IsZero() || now.After(r.full.Add(time.Second))) {
		var oldest time.Time
		for n, exp := range r.m {
			switch {
			case now.After(exp.Add(time.Second)):
				delete(r.m, n)
			case oldest.IsZero() || exp.Before(oldest):
				oldest = exp
			}
		}
		r.prune = min(max(1024, 2*len(r.m)), r.max)
		r.full = time.Time{}
		if len(r.m) >= r.max {
			r.full = oldest
		}
	}
	if len(r.m) >= r.max {
		return errReplayFull
	}
	r.m[nonce] = expires
	return nil
}
