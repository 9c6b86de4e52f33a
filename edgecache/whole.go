package edgecache

import (
	"context"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/internal/callinfo"
	"github.com/keybroker/keybroker/managed"
	"github.com/keybroker/keybroker/policy"
)

// UnaryInterceptor relays whole to the central tier the calls made of
// several parts — batches and ReEncrypt — when any part would be forwarded.
// It runs inside s's own interceptor, which authenticates the call first
// (rpc.Server.UnaryInterceptorThen, which hands it s).
//
// A client's forward proof covers the call it made, not the parts the edge
// splits it into: the central tier checks the digest of the very request
// bytes the client signed. An edge that served some items of a batch and
// forwarded the rest would have to forward requests no client signed — the
// hole a proof closes. So a batch (or a ReEncrypt) is decided up front: all
// of it here, or all of it at the central tier, which authorizes and audits
// each item as the client. A part that turns out to need the central tier
// only once it has begun here (a placement the replica learnt of meanwhile)
// fails Unavailable, and the client retries.
func (c *Cache) UnaryInterceptor(s Calls) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		var resp proto.Message
		switch r := req.(type) {
		case *kbv1.ReEncryptRequest:
			dst := r.GetDestinationKeyId()
			id, v, err := managed.PeekKeyID(r.GetCiphertext())
			if err == nil && dst == "" {
				dst = id
			}
			if err == nil && (c.remote(ctx, id, v) || c.remote(ctx, dst, 0)) {
				resp = &kbv1.ReEncryptResponse{}
			}
		case *kbv1.BatchEncryptRequest:
			for _, it := range r.GetItems() {
				if c.remote(ctx, it.GetKeyId(), 0) {
					resp = &kbv1.BatchEncryptResponse{}
					break
				}
			}
		case *kbv1.BatchDecryptRequest:
			for _, it := range r.GetItems() {
				if id, v, err := managed.PeekKeyID(it.GetCiphertext()); err == nil && c.remote(ctx, id, v) {
					resp = &kbv1.BatchDecryptResponse{}
					break
				}
			}
		case *kbv1.BatchGenerateDataKeyRequest:
			for _, it := range r.GetItems() {
				if c.remote(ctx, it.GetKeyId(), 0) {
					resp = &kbv1.BatchGenerateDataKeyResponse{}
					break
				}
			}
		}
		if resp == nil {
			return h(ctx, req)
		}
		ctx, call, err := s.Begin(ctx, policy.Action(callinfo.MethodName(info.FullMethod)), "")
		if err != nil {
			return nil, err
		}
		call.SetBackend(servedCentral)
		if err := c.forward(ctx, info.FullMethod, resp); err != nil {
			return nil, s.End(ctx, call, err)
		}
		return resp, s.End(ctx, call, nil)
	}
}

// remote says whether an operation on version v of key id (0: the
// primary) would be forwarded (Cache.forwards), for a key the replica
// knows.
func (c *Cache) remote(ctx context.Context, id string, v uint32) bool {
	k, err := replicaSource{c}.Get(ctx, id)
	if err != nil {
		return false
	}
	return c.forwards(k, v)
}
