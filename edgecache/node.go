package edgecache

import (
	"context"
	"errors"
	"fmt"

	"github.com/google/btree"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/envelope"
	"github.com/keybroker/keybroker/identity"
	"github.com/keybroker/keybroker/internal/callinfo"
	"github.com/keybroker/keybroker/internal/forwardproof"
	"github.com/keybroker/keybroker/managed"
	"github.com/keybroker/keybroker/pipeline"
	"github.com/keybroker/keybroker/placement"
	"github.com/keybroker/keybroker/policy"
	"github.com/keybroker/keybroker/secret"
)

// Performer is the edge as the pipeline's Performer: operations run from
// the cache when the edge may hold the key's material and are forwarded to
// the central tier otherwise (pipeline.Forwarder says which, so the
// pipeline leaves a forwarded operation's checks to the central tier).
func (c *Cache) Performer() pipeline.Performer { return &performer{c} }

type performer struct{ c *Cache }

var (
	_ pipeline.Performer = (*performer)(nil)
	_ pipeline.Forwarder = (*performer)(nil)
)

// What the audit line names as having served an operation.
const (
	servedLocal   = "edge-cache"
	servedCentral = "central"
)

const (
	kbService    = "/keybroker.v1.KeyBroker/"
	adminService = "/keybroker.v1.KeyAdmin/"
)

func (n *performer) Get(ctx context.Context, id string) (*managed.Key, error) {
	return replicaSource{n.c}.Get(ctx, id)
}

// local says whether an operation on k runs here.
func (n *performer) local(k *managed.Key) bool { return n.c.mayHold(k) }

// Served names what performs op on k.
func (n *performer) Served(k *managed.Key, op policy.Action) string {
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
// in ctx: the request as the client sent it (callinfo.IncomingCall), its forward
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
	in, req, ok := callinfo.IncomingCall(ctx)
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
	out, err := c.sync.Forward(callinfo.OutgoingRequestID(ctx), &kbv1.ForwardRequest{Method: method, Request: raw,
		ClientChain: chain, Proof: proof})
	if err != nil {
		if status.Code(err) == codes.Unavailable {
			st := status.Convert(err)
			return status.Errorf(codes.Unavailable, "edge %s cannot reach the central tier to forward %s: %s", c.cfg.NodeID, callinfo.MethodName(method), st.Message())
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
			c.cfg.NodeID, callinfo.MethodName(method), c.spiffeID))
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
		return nil, nil, status.Errorf(codes.Unauthenticated, "edge %s has no client certificate to forward %s with", c.cfg.NodeID, callinfo.MethodName(method))
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

// run performs op on version v of k (0: the primary) locally when k's
// material may be here, and forwards it otherwise (Forwards), falling
// back to forwarding when the central tier refuses the material (a
// placement the replica has not caught up with). It is generic over the
// operation's result struct, which local (managed.Ops) and remote (the
// central tier's answer) both return.
func run[T any](n *performer, k *managed.Key, v uint32, local func() (T, error), remote func() (T, error)) (T, error) {
	if n.c.forwards(k, v) {
		return remote()
	}
	out, err := local()
	if errors.Is(err, errNotPlaced) {
		return remote()
	}
	return out, err
}

// Forwards says whether op on version v of k goes to the central tier
// (forwards). PublicKey and Verify never do: the replica has every
// version's public key.
func (n *performer) Forwards(k *managed.Key, op managed.Operation, v uint32) bool {
	return op != managed.OpPublicKey && n.c.forwards(k, v)
}

// forwards says whether an operation on version v of k (0: the primary)
// goes to the central tier: a key in backend mode, one whose material may
// not be here, or a version newer than the replica's. Such a version is
// forwarded because the central tier made it an instant ago, and an edge
// that applied the rotation first has already used it, so its ciphertexts
// and MACs reach this edge before the event does: only the central tier
// can answer for that version now, and answering NotFound would fail a
// caller whose data is fine. run and UnaryInterceptor both decide by it,
// so a call is relayed whole exactly when a part of it would be forwarded.
func (c *Cache) forwards(k *managed.Key, v uint32) bool {
	return !k.Mode.HoldsMaterial() || !c.mayHold(k) || int64(v) > int64(len(k.Versions))
}

func (n *performer) Encrypt(ctx context.Context, k *managed.Key, pt []byte, ectx map[string]string) (managed.Encrypted, error) {
	return run(n, k, 0, func() (managed.Encrypted, error) {
		return n.c.ops.Encrypt(ctx, k, pt, ectx)
	}, func() (managed.Encrypted, error) {
		resp := &kbv1.EncryptResponse{}
		err := n.c.forward(ctx, kbService+"Encrypt", resp)
		return managed.Encrypted{Ciphertext: resp.GetCiphertext(), Key: k, Version: resp.GetKeyVersion()}, err
	})
}

func (n *performer) Decrypt(ctx context.Context, k *managed.Key, h *envelope.Header, body []byte, ectx map[string]string) (managed.Decrypted, error) {
	return run(n, k, h.Version, func() (managed.Decrypted, error) {
		return n.c.ops.Decrypt(ctx, k, h, body, ectx)
	}, func() (managed.Decrypted, error) {
		resp := &kbv1.DecryptResponse{}
		err := n.c.forward(ctx, kbService+"Decrypt", resp)
		return managed.Decrypted{Plaintext: resp.GetPlaintext(), Key: k, Version: resp.GetKeyVersion()}, err
	})
}

func (n *performer) GenerateDataKey(ctx context.Context, k *managed.Key, ectx map[string]string, wrapped bool) (*managed.DataKey, error) {
	return run(n, k, 0, func() (*managed.DataKey, error) {
		return n.c.ops.GenerateDataKey(ctx, k, ectx, wrapped)
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
			Wrapped: resp.GetWrappedDataKey(), Key: k, Version: resp.GetKeyVersion()}, nil
	})
}

func (n *performer) DecryptDataKey(ctx context.Context, k *managed.Key, v uint32, wrapped []byte, ectx map[string]string) (managed.UnwrappedDataKey, error) {
	return run(n, k, v, func() (managed.UnwrappedDataKey, error) {
		return n.c.ops.DecryptDataKey(ctx, k, v, wrapped, ectx)
	}, func() (managed.UnwrappedDataKey, error) {
		resp := &kbv1.DecryptDataKeyResponse{}
		if err := n.c.forward(ctx, kbService+"DecryptDataKey", resp); err != nil {
			return managed.UnwrappedDataKey{}, err
		}
		return managed.UnwrappedDataKey{Plaintext: secret.New(resp.GetPlaintext()), Key: k, Version: v}, nil
	})
}

func (n *performer) Sign(ctx context.Context, k *managed.Key, msg []byte, digest bool) (managed.Signature, error) {
	return run(n, k, 0, func() (managed.Signature, error) {
		return n.c.ops.Sign(ctx, k, msg, digest)
	}, func() (managed.Signature, error) {
		resp := &kbv1.SignResponse{}
		err := n.c.forward(ctx, kbService+"Sign", resp)
		return managed.Signature{Signature: resp.GetSignature(), Key: k, Version: resp.GetKeyVersion()}, err
	})
}

// PublicKey and Verify need no material: the replica has every version's
// public key.
func (n *performer) PublicKey(ctx context.Context, k *managed.Key, v uint32) (managed.PublicKey, error) {
	return n.c.ops.PublicKey(ctx, k, v)
}

func (n *performer) Verify(ctx context.Context, k *managed.Key, v uint32, msg []byte, digest bool, sig []byte) (managed.Verification, error) {
	return n.c.ops.Verify(ctx, k, v, msg, digest, sig)
}

func (n *performer) GenerateMac(ctx context.Context, k *managed.Key, msg []byte) (managed.MAC, error) {
	return run(n, k, 0, func() (managed.MAC, error) {
		return n.c.ops.GenerateMac(ctx, k, msg)
	}, func() (managed.MAC, error) {
		resp := &kbv1.GenerateMacResponse{}
		err := n.c.forward(ctx, kbService+"GenerateMac", resp)
		return managed.MAC{Tag: resp.GetMac(), Key: k, Version: resp.GetKeyVersion()}, err
	})
}

func (n *performer) VerifyMac(ctx context.Context, k *managed.Key, v uint32, msg, tag []byte) (managed.Verification, error) {
	return run(n, k, v, func() (managed.Verification, error) {
		return n.c.ops.VerifyMac(ctx, k, v, msg, tag)
	}, func() (managed.Verification, error) {
		resp := &kbv1.VerifyMacResponse{}
		err := n.c.forward(ctx, kbService+"VerifyMac", resp)
		return managed.Verification{Valid: resp.GetValid(), Key: k, Version: resp.GetKeyVersion()}, err
	})
}

// GenerateRandom is forwarded: random bytes come from a root of trust.
func (n *performer) GenerateRandom(ctx context.Context, size int) ([]byte, error) {
	if err := n.c.Serving(); err != nil {
		return nil, err
	}
	resp := &kbv1.GenerateRandomResponse{}
	err := n.c.forward(ctx, kbService+"GenerateRandom", resp)
	return resp.GetRandom(), err
}

func (n *performer) ListKeys(_ context.Context, sel map[string]string, size int, token string, visible func(*managed.Key) bool) ([]*managed.Key, string, error) {
	if err := n.c.Serving(); err != nil {
		return nil, "", err
	}
	n.c.mu.RLock()
	keys := n.c.sorted
	n.c.mu.RUnlock()
	return page(keys, sel, size, token, visible)
}

// page is managed.Page over the replica's ordered index: up to size keys
// after the token's key (managed.PageAfter's cursor, the tokens every node
// hands out, so a listing may move between nodes) that carry the
// selector's labels and that visible lets the caller see, and the next
// page's token ("" after the last). A cursor never skips or repeats a key
// that stayed while others came and went. keys is a clone no change
// alters, walked without the cache's lock.
func page(keys *btree.BTreeG[*managed.Key], sel map[string]string, size int, token string, visible func(*managed.Key) bool) ([]*managed.Key, string, error) {
	size, err := managed.CheckPageSize(size)
	if err != nil {
		return nil, "", err
	}
	after, err := managed.PageAfter(token, sel)
	if err != nil {
		return nil, "", err
	}
	var out []*managed.Key
	next := ""
	keys.AscendGreaterOrEqual(&managed.Key{ID: after}, func(k *managed.Key) bool {
		if k.ID == after || !k.Matches(sel) || visible != nil && !visible(k) {
			return true
		}
		if len(out) == size {
			next = managed.PageToken(sel, out[len(out)-1].ID)
			return false
		}
		out = append(out, k)
		return true
	})
	return out, next, nil
}

func (n *performer) LookupKey(_ context.Context, k *managed.Key, op policy.Action, labels map[string]string) ([]placement.Candidate, error) {
	n.c.mu.RLock()
	nodes := n.c.topo
	n.c.mu.RUnlock()
	return placement.Lookup(placement.Input{Key: k, Op: op, ClientLabels: labels, Nodes: nodes, Self: n.c.cfg.NodeID,
		Policy: n.c.Policy().Current(), TrustDomain: n.c.cfg.TrustDomain, CentralUnreachable: !n.c.Connected()}), nil
}
