package edgecache

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/identity"
	"github.com/keybroker/keybroker/internal/forwardproof"
	"github.com/keybroker/keybroker/managed"
	"github.com/keybroker/keybroker/placement"
	"github.com/keybroker/keybroker/policy"
	"github.com/keybroker/keybroker/rpc"
	"github.com/keybroker/keybroker/secret"
)

// Node is the edge as an rpc.Node: operations run from the cache when the
// edge may hold the key's material and are forwarded otherwise.
func (c *Cache) Node() rpc.Node { return &edgeNode{c} }

type edgeNode struct{ c *Cache }

var _ rpc.Node = (*edgeNode)(nil)

// What the audit line names as having served an operation.
const (
	servedLocal   = "edge-cache"
	servedCentral = "central"
)

const (
	kbService    = "/keybroker.v1.KeyBroker/"
	adminService = "/keybroker.v1.KeyAdmin/"
)

func (n *edgeNode) Get(ctx context.Context, id string) (*managed.Key, error) {
	return replicaSource{n.c}.Get(ctx, id)
}

// local says whether an operation on k runs here.
func (n *edgeNode) local(k *managed.Key) bool { return n.c.mayHold(k) }

// Served names what performs op on k.
func (n *edgeNode) Served(k *managed.Key, op policy.Action) string {
	switch op {
	case policy.Verify, policy.GetPublicKey, policy.DescribeKey, policy.LookupKey:
		return servedLocal
	}
	if n.local(k) {
		return servedLocal
	}
	return servedCentral
}

// forward performs the incoming call at the central tier for the caller
// in ctx: the request as the client sent it (rpc.IncomingCall), its forward
// proof, and its certificate chain from the TLS handshake, so that the
// central tier acts only as the client that made this call to this edge.
// A call without a proof (or with one for another edge) is answered
// FailedPrecondition carrying forwardproof.RequiredReason (and the
// forwardproof.RequiredTrailer, for clients that read trailers): the SDK signs
// and retries. Only whole calls are forwarded: method must be the incoming
// call's (Cache.UnaryInterceptor relays batches and ReEncrypt whole).
func (c *Cache) forward(ctx context.Context, method string, resp proto.Message) error {
	if _, ok := identity.FromContext(ctx); !ok {
		return status.Error(codes.Unauthenticated, "no identity to forward")
	}
	in, req, ok := rpc.IncomingCall(ctx)
	if !ok || in != method {
		// Part of a call that looked local when it began (a placement
		// the replica learnt of meanwhile): the client's proof covers
		// the whole call, not this part.
		return status.Errorf(codes.Unavailable, "edge %s can forward only whole calls, and part of this one must now go to the central tier: retry", c.cfg.NodeID)
	}
	proof, chain, err := c.proofOf(ctx, method)
	if err != nil {
		return err
	}
	raw, err := forwardproof.Marshal(req)
	if err != nil {
		return status.Errorf(codes.Internal, "encoding a forwarded request: %v", err)
	}
	c.stats.forwards.Add(1)
	// No Principal: the central tier ignores it, the proof names the
	// client.
	out, err := c.sync.Forward(rpc.OutgoingRequestID(ctx), &kbv1.ForwardRequest{Method: method, Request: raw,
		ClientChain: chain, Proof: proof})
	if err != nil {
		if status.Code(err) == codes.Unavailable {
			st := status.Convert(err)
			return status.Errorf(codes.Unavailable, "edge %s cannot reach the central tier to forward %s: %s", c.cfg.NodeID, rpc.MethodName(method), st.Message())
		}
		return err
	}
	if err := proto.Unmarshal(out.GetResponse(), resp); err != nil {
		return status.Errorf(codes.Internal, "decoding a forwarded response: %v", err)
	}
	return nil
}

// proofOf returns the caller's forward proof for this edge and its
// certificate chain (leaf first, DER), or asks for a proof.
func (c *Cache) proofOf(ctx context.Context, method string) ([]byte, [][]byte, error) {
	var proof []byte
	if md, ok := metadata.FromIncomingContext(ctx); ok {
		if v := md.Get(forwardproof.MetadataKey); len(v) == 1 {
			proof = []byte(v[0])
		}
	}
	if proof == nil || !c.addressedHere(proof) {
		_ = grpc.SetTrailer(ctx, metadata.Pairs(forwardproof.RequiredTrailer, "1"))
		return nil, nil, forwardproof.Required(fmt.Sprintf(
			"edge %s forwards %s to the central tier, which performs it only with the caller's forward proof for %s: sign the call (the keybroker SDK does)",
			c.cfg.NodeID, rpc.MethodName(method), c.spiffeID))
	}
	p, ok := peer.FromContext(ctx)
	var chain [][]byte
	if ok {
		if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok {
			for _, cert := range ti.State.PeerCertificates {
				chain = append(chain, cert.Raw)
			}
		}
	}
	if len(chain) == 0 {
		return nil, nil, status.Errorf(codes.Unauthenticated, "edge %s has no client certificate to forward %s with", c.cfg.NodeID, rpc.MethodName(method))
	}
	return proof, chain, nil
}

// addressedHere says whether a proof names this edge as its audience. The
// central tier checks everything; this only turns a proof made for
// another node (a stale route) into a request for a new one.
func (c *Cache) addressedHere(raw []byte) bool {
	var p kbv1.ForwardProof
	var cl kbv1.ForwardProofClaims
	return proto.Unmarshal(raw, &p) == nil && proto.Unmarshal(p.GetClaims(), &cl) == nil && cl.GetAudience() == c.spiffeID
}

// run performs op locally when k's material may be here, falling back to
// forwarding when the central tier refuses the material (a placement the
// replica has not caught up with).
func run[T any](n *edgeNode, k *managed.Key, local func() (T, error), remote func() (T, error)) (T, error) {
	return runAt(n, k, 0, local, remote)
}

// runAt is run for an operation on version v of k (0: the primary). A
// version newer than the replica's is forwarded: the central tier made it
// an instant ago, and an edge that applied the rotation first has already
// used it, so its ciphertexts and MACs reach this edge before the event
// does. Only the central tier can answer for that version now; answering
// NotFound would fail a caller whose data is fine.
func runAt[T any](n *edgeNode, k *managed.Key, v uint32, local func() (T, error), remote func() (T, error)) (T, error) {
	if n.c.forwards(k, v) {
		return remote()
	}
	out, err := local()
	if errors.Is(err, errNotPlaced) {
		return remote()
	}
	return out, err
}

// forwards says whether an operation on version v of k (0: the primary)
// goes to the central tier: a key in backend mode, one whose material may
// not be here, or a version newer than the replica's (runAt says why).
// runAt and UnaryInterceptor both decide by it, so a call is relayed whole
// exactly when a part of it would be forwarded.
func (c *Cache) forwards(k *managed.Key, v uint32) bool {
	return !k.Mode.HoldsMaterial() || !c.mayHold(k) || int64(v) > int64(len(k.Versions))
}

type encrypted struct {
	ct []byte
	k  *managed.Key
}

func (n *edgeNode) Encrypt(ctx context.Context, id string, pt []byte, ectx map[string]string) ([]byte, *managed.Key, error) {
	k, err := n.Get(ctx, id)
	if err != nil {
		return nil, nil, err
	}
	out, err := run(n, k, func() (encrypted, error) {
		ct, k, err := n.c.ops.Encrypt(ctx, id, pt, ectx)
		return encrypted{ct, k}, err
	}, func() (encrypted, error) {
		resp := &kbv1.EncryptResponse{}
		err := n.c.forward(ctx, kbService+"Encrypt", resp)
		return encrypted{resp.GetCiphertext(), n.atVersion(k, resp.GetKeyVersion())}, err
	})
	return out.ct, out.k, err
}

// atVersion is k as the central tier answered: its primary may be newer
// than the replica's for an instant.
func (n *edgeNode) atVersion(k *managed.Key, v uint32) *managed.Key {
	if v == 0 || v == k.Primary {
		return k
	}
	c := k.Clone()
	c.Primary = v
	return c
}

type decrypted struct {
	pt []byte
	k  *managed.Key
	v  uint32
}

func (n *edgeNode) Decrypt(ctx context.Context, ct []byte, ectx map[string]string, expect string) ([]byte, *managed.Key, uint32, error) {
	id, v, err := managed.PeekKeyID(ct)
	if err != nil {
		return nil, nil, 0, err
	}
	k, err := n.Get(ctx, id)
	if err != nil {
		return nil, nil, 0, err
	}
	out, err := runAt(n, k, v, func() (decrypted, error) {
		pt, k, v, err := n.c.ops.Decrypt(ctx, ct, ectx, expect)
		return decrypted{pt, k, v}, err
	}, func() (decrypted, error) {
		resp := &kbv1.DecryptResponse{}
		err := n.c.forward(ctx, kbService+"Decrypt", resp)
		return decrypted{resp.GetPlaintext(), k, resp.GetKeyVersion()}, err
	})
	return out.pt, out.k, out.v, err
}

func (n *edgeNode) GenerateDataKey(ctx context.Context, id string, ectx map[string]string, wrapped bool) (*managed.DataKey, error) {
	k, err := n.Get(ctx, id)
	if err != nil {
		return nil, err
	}
	return run(n, k, func() (*managed.DataKey, error) {
		return n.c.ops.GenerateDataKey(ctx, id, ectx, wrapped)
	}, func() (*managed.DataKey, error) {
		method := "GenerateDataKey"
		if !wrapped {
			method = "GenerateDataKeyWithoutPlaintext"
		}
		resp := &kbv1.GenerateDataKeyResponse{}
		if err := n.c.forward(ctx, kbService+method, resp); err != nil {
			return nil, err
		}
		return &managed.DataKey{Plaintext: secret.New(resp.GetPlaintext()), Encrypted: resp.GetEncryptedDataKey(),
			Wrapped: resp.GetWrappedDataKey(), Key: n.atVersion(k, resp.GetKeyVersion())}, nil
	})
}

type dataKey struct {
	dek *secret.Bytes
	k   *managed.Key
}

func (n *edgeNode) DecryptDataKey(ctx context.Context, id string, v uint32, wrapped []byte, ectx map[string]string) (*secret.Bytes, *managed.Key, error) {
	k, err := n.Get(ctx, id)
	if err != nil {
		return nil, nil, err
	}
	out, err := runAt(n, k, v, func() (dataKey, error) {
		dek, k, err := n.c.ops.DecryptDataKey(ctx, id, v, wrapped, ectx)
		return dataKey{dek, k}, err
	}, func() (dataKey, error) {
		resp := &kbv1.DecryptDataKeyResponse{}
		if err := n.c.forward(ctx, kbService+"DecryptDataKey", resp); err != nil {
			return dataKey{}, err
		}
		return dataKey{secret.New(resp.GetPlaintext()), k}, nil
	})
	return out.dek, out.k, err
}

type signed struct {
	sig []byte
	k   *managed.Key
}

func (n *edgeNode) Sign(ctx context.Context, id string, msg []byte, digest bool) ([]byte, *managed.Key, error) {
	k, err := n.Get(ctx, id)
	if err != nil {
		return nil, nil, err
	}
	out, err := run(n, k, func() (signed, error) {
		sig, k, err := n.c.ops.Sign(ctx, id, msg, digest)
		return signed{sig, k}, err
	}, func() (signed, error) {
		resp := &kbv1.SignResponse{}
		err := n.c.forward(ctx, kbService+"Sign", resp)
		return signed{resp.GetSignature(), n.atVersion(k, resp.GetKeyVersion())}, err
	})
	return out.sig, out.k, err
}

// PublicKey and Verify need no material: the replica has every version's
// public key.
func (n *edgeNode) PublicKey(ctx context.Context, id string, v uint32) ([]byte, *managed.Key, uint32, error) {
	return n.c.ops.PublicKey(ctx, id, v)
}

func (n *edgeNode) Verify(ctx context.Context, id string, v uint32, msg []byte, digest bool, sig []byte) (bool, uint32, error) {
	return n.c.ops.Verify(ctx, id, v, msg, digest, sig)
}

func (n *edgeNode) GenerateMac(ctx context.Context, id string, msg []byte) ([]byte, *managed.Key, error) {
	k, err := n.Get(ctx, id)
	if err != nil {
		return nil, nil, err
	}
	out, err := run(n, k, func() (signed, error) {
		tag, k, err := n.c.ops.GenerateMac(ctx, id, msg)
		return signed{tag, k}, err
	}, func() (signed, error) {
		resp := &kbv1.GenerateMacResponse{}
		err := n.c.forward(ctx, kbService+"GenerateMac", resp)
		return signed{resp.GetMac(), n.atVersion(k, resp.GetKeyVersion())}, err
	})
	return out.sig, out.k, err
}

type verified struct {
	ok bool
	v  uint32
}

func (n *edgeNode) VerifyMac(ctx context.Context, id string, v uint32, msg, tag []byte) (bool, uint32, error) {
	k, err := n.Get(ctx, id)
	if err != nil {
		return false, 0, err
	}
	out, err := runAt(n, k, v, func() (verified, error) {
		ok, v, err := n.c.ops.VerifyMac(ctx, id, v, msg, tag)
		return verified{ok, v}, err
	}, func() (verified, error) {
		resp := &kbv1.VerifyMacResponse{}
		err := n.c.forward(ctx, kbService+"VerifyMac", resp)
		return verified{resp.GetValid(), resp.GetKeyVersion()}, err
	})
	return out.ok, out.v, err
}

// GenerateRandom is forwarded: random bytes come from a root of trust.
func (n *edgeNode) GenerateRandom(ctx context.Context, size int) ([]byte, error) {
	if err := n.c.Serving(); err != nil {
		return nil, err
	}
	resp := &kbv1.GenerateRandomResponse{}
	err := n.c.forward(ctx, kbService+"GenerateRandom", resp)
	return resp.GetRandom(), err
}

func (n *edgeNode) ListKeys(_ context.Context, sel map[string]string, size int, token string, visible func(*managed.Key) bool) ([]*managed.Key, string, error) {
	if err := n.c.Serving(); err != nil {
		return nil, "", err
	}
	n.c.mu.RLock()
	keys := n.c.sorted
	n.c.mu.RUnlock()
	return managed.Page(keys, sel, size, token, visible)
}

func (n *edgeNode) LookupKey(_ context.Context, k *managed.Key, op policy.Action, labels map[string]string) ([]placement.Candidate, error) {
	n.c.mu.RLock()
	nodes := n.c.topo
	n.c.mu.RUnlock()
	return placement.Lookup(placement.Input{Key: k, Op: op, ClientLabels: labels, Nodes: nodes, Self: n.c.cfg.NodeID,
		Policy: n.c.Policy().Current(), TrustDomain: n.c.cfg.TrustDomain, CentralUnreachable: !n.c.Connected()}), nil
}
