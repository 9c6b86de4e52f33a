package client

import (
	"context"
	"maps"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/identity"
)

// Admin returns a KeyAdmin client over the configured nodes (an edge
// forwards admin calls to the central tier). Each call goes to the first
// configured node and, when a node is unavailable (down, draining, cut off
// from the store), to the next, in passes paced like the other operations
// (Config.MaxAttempts, Config.Backoff): a central node that dies does not
// fail an admin call while another serves. Every other answer is final,
// a revision conflict (Aborted, UpdateKey's expected_revision) too: every
// node would answer it.
//
// A call whose node failed after it was sent may have taken effect there
// before the node went away, so a call that moved on is carried out at
// least once, not exactly once. CreateKey takes care of it: a retry that
// finds the key already made, with the type, mode, root, labels, rotation
// period, description and placement asked for, answers with that key. A
// retried RotateKey may rotate twice; a retried UpdateKey applies the same
// change again, or fails with Aborted when it named an expected_revision
// its own first attempt moved past.
//
// Errors are *Error, as from the other operations.
func (c *Client) Admin() (kbv1.KeyAdminClient, error) {
	if _, err := c.conn(c.cfg.Addrs[0], identity.Identity{}); err != nil {
		return nil, err
	}
	return adminClient{c}, nil
}

// adminClient is the KeyAdmin client Admin returns.
type adminClient struct{ c *Client }

var _ kbv1.KeyAdminClient = adminClient{}

// adminCall runs one admin call over the configured nodes, moving on
// from a node that is unavailable, in passes with a pause between them.
// retried tells fn whether an earlier attempt failed after possibly
// reaching its node.
func adminCall[T any](ctx context.Context, c *Client, op, key string, fn func(ctx context.Context, cn *conn, retried bool) (T, error)) (T, error) {
	var zero T
	ctx = withRequestID(ctx)
	var last *Error
	attempts := 0
	for pass := range c.cfg.MaxAttempts {
		if pass > 0 && !c.pause(ctx, pass) {
			break
		}
		for _, addr := range c.cfg.Addrs {
			cn, err := c.conn(addr, identity.Identity{})
			if err != nil {
				return zero, local(op, key, codes.FailedPrecondition, err)
			}
			attempts++
			cn.calls.Add(1)
			out, err := fn(ctx, cn, last != nil)
			if err == nil {
				return out, nil
			}
			last = fromRPC(op, key, addr, err)
			last.Attempts = attempts
			if !nextNode(ctx, last) || last.Code == codes.Aborted {
				return zero, last
			}
		}
	}
	return zero, gaveUp(ctx, last, op, key, attempts)
}

// admin is adminCall for a call that has no second thoughts on a retry.
func admin[Req, Resp any](ctx context.Context, a adminClient, op, key string, in Req, opts []grpc.CallOption,
	rpc func(kbv1.KeyAdminClient, context.Context, Req, ...grpc.CallOption) (Resp, error)) (Resp, error) {
	return adminCall(ctx, a.c, op, key, func(ctx context.Context, cn *conn, _ bool) (Resp, error) {
		return rpc(kbv1.NewKeyAdminClient(cn.cc), ctx, in, opts...)
	})
}

// CreateKey creates a key. A retry after an attempt that may have created
// it answers with the key it finds when that key is the one asked for.
func (a adminClient) CreateKey(ctx context.Context, in *kbv1.CreateKeyRequest, opts ...grpc.CallOption) (*kbv1.KeyMetadata, error) {
	return adminCall(ctx, a.c, "CreateKey", in.GetKeyId(), func(ctx context.Context, cn *conn, retried bool) (*kbv1.KeyMetadata, error) {
		out, err := kbv1.NewKeyAdminClient(cn.cc).CreateKey(ctx, in, opts...)
		if !retried || fromRPC("CreateKey", in.GetKeyId(), cn.addr, err).Code != codes.AlreadyExists {
			return out, err
		}
		d, derr := cn.kb.DescribeKey(ctx, &kbv1.DescribeKeyRequest{KeyId: in.GetKeyId()})
		if derr != nil || !madeBy(d.GetKey(), in) {
			return out, err
		}
		return d.GetKey(), nil
	})
}

// madeBy says whether k is what CreateKey in would have made: a retried
// CreateKey whose first attempt succeeded finds it.
func madeBy(k *kbv1.KeyMetadata, in *kbv1.CreateKeyRequest) bool {
	switch {
	case k == nil, k.GetType() != in.GetType(), k.GetDerived() != in.GetDerived(),
		k.GetDescription() != in.GetDescription(), k.GetPlacement() != in.GetPlacement(),
		!maps.Equal(k.GetLabels(), in.GetLabels()), k.GetRotationPeriod().AsDuration() != in.GetRotationPeriod().AsDuration():
		return false
	case in.GetMode() != kbv1.KeyMode_KEY_MODE_UNSPECIFIED && k.GetMode() != in.GetMode():
		return false
	case in.GetRootKey() != "" && k.GetRootKey() != in.GetRootKey():
		return false
	}
	return true
}

func (a adminClient) RotateKey(ctx context.Context, in *kbv1.KeyRequest, opts ...grpc.CallOption) (*kbv1.KeyMetadata, error) {
	return admin(ctx, a, "RotateKey", in.GetKeyId(), in, opts, kbv1.KeyAdminClient.RotateKey)
}

func (a adminClient) UpdateKey(ctx context.Context, in *kbv1.UpdateKeyRequest, opts ...grpc.CallOption) (*kbv1.KeyMetadata, error) {
	return admin(ctx, a, "UpdateKey", in.GetKeyId(), in, opts, kbv1.KeyAdminClient.UpdateKey)
}

func (a adminClient) DisableKey(ctx context.Context, in *kbv1.KeyRequest, opts ...grpc.CallOption) (*kbv1.KeyMetadata, error) {
	return admin(ctx, a, "DisableKey", in.GetKeyId(), in, opts, kbv1.KeyAdminClient.DisableKey)
}

func (a adminClient) EnableKey(ctx context.Context, in *kbv1.KeyRequest, opts ...grpc.CallOption) (*kbv1.KeyMetadata, error) {
	return admin(ctx, a, "EnableKey", in.GetKeyId(), in, opts, kbv1.KeyAdminClient.EnableKey)
}

func (a adminClient) ScheduleKeyDeletion(ctx context.Context, in *kbv1.ScheduleKeyDeletionRequest, opts ...grpc.CallOption) (*kbv1.KeyMetadata, error) {
	return admin(ctx, a, "ScheduleKeyDeletion", in.GetKeyId(), in, opts, kbv1.KeyAdminClient.ScheduleKeyDeletion)
}

func (a adminClient) CancelKeyDeletion(ctx context.Context, in *kbv1.KeyRequest, opts ...grpc.CallOption) (*kbv1.KeyMetadata, error) {
	return admin(ctx, a, "CancelKeyDeletion", in.GetKeyId(), in, opts, kbv1.KeyAdminClient.CancelKeyDeletion)
}

func (a adminClient) ListNodes(ctx context.Context, in *kbv1.ListNodesRequest, opts ...grpc.CallOption) (*kbv1.ListNodesResponse, error) {
	return admin(ctx, a, "ListNodes", "", in, opts, kbv1.KeyAdminClient.ListNodes)
}

func (a adminClient) EnrollNode(ctx context.Context, in *kbv1.EnrollNodeRequest, opts ...grpc.CallOption) (*kbv1.Node, error) {
	return admin(ctx, a, "EnrollNode", "", in, opts, kbv1.KeyAdminClient.EnrollNode)
}

func (a adminClient) UpdateNode(ctx context.Context, in *kbv1.UpdateNodeRequest, opts ...grpc.CallOption) (*kbv1.Node, error) {
	return admin(ctx, a, "UpdateNode", "", in, opts, kbv1.KeyAdminClient.UpdateNode)
}

func (a adminClient) RemoveNode(ctx context.Context, in *kbv1.RemoveNodeRequest, opts ...grpc.CallOption) (*kbv1.RemoveNodeResponse, error) {
	return admin(ctx, a, "RemoveNode", "", in, opts, kbv1.KeyAdminClient.RemoveNode)
}

// CreateAccessKey is retried like the other admin calls, at least once:
// a node that died after making the key leaves it behind with its secret
// lost in the answer; list and revoke it (ListAccessKeys names who made
// each and when).
func (a adminClient) CreateAccessKey(ctx context.Context, in *kbv1.CreateAccessKeyRequest, opts ...grpc.CallOption) (*kbv1.AccessKey, error) {
	return admin(ctx, a, "CreateAccessKey", "", in, opts, kbv1.KeyAdminClient.CreateAccessKey)
}

func (a adminClient) ListAccessKeys(ctx context.Context, in *kbv1.ListAccessKeysRequest, opts ...grpc.CallOption) (*kbv1.ListAccessKeysResponse, error) {
	return admin(ctx, a, "ListAccessKeys", "", in, opts, kbv1.KeyAdminClient.ListAccessKeys)
}

func (a adminClient) RevokeAccessKey(ctx context.Context, in *kbv1.AccessKeyRequest, opts ...grpc.CallOption) (*kbv1.AccessKey, error) {
	return admin(ctx, a, "RevokeAccessKey", "", in, opts, kbv1.KeyAdminClient.RevokeAccessKey)
}
