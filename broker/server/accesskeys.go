package server

import (
	"context"
	"strings"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/keybroker/keybroker/accesskey"
	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/identity"
	"github.com/keybroker/keybroker/internal/clip"
	"github.com/keybroker/keybroker/managed"
	"github.com/keybroker/keybroker/policy"
)

// accessKeyOp runs one access-key admin call: begun and audited, the
// service action authorized, run, ended with the detail run returns
// (never a secret).
func (a *keyAdmin) accessKeyOp(ctx context.Context, op policy.Action, run func(ctx context.Context, by string) (string, error)) error {
	tctx, c, err := a.s.Begin(ctx, op, "")
	if err != nil {
		return err
	}
	if err := c.AuthorizeService(op); err != nil {
		return a.s.End(tctx, c, err)
	}
	detail, err := run(tctx, c.Who().String())
	c.SetDetail(detail)
	return a.s.End(tctx, c, err)
}

// CreateAccessKey makes an AWS access key for a client or admin of this
// trust domain; its secret is in this answer only.
func (a *keyAdmin) CreateAccessKey(ctx context.Context, r *kbv1.CreateAccessKeyRequest) (*kbv1.AccessKey, error) {
	var out *kbv1.AccessKey
	err := a.accessKeyOp(ctx, policy.CreateAccessKey, func(ctx context.Context, by string) (string, error) {
		who, err := a.principal(r.GetPrincipal())
		if err != nil {
			return "principal " + clip.Quote(r.GetPrincipal()), err
		}
		rec, secret, err := a.s.svc.CreateAccessKey(ctx, who, r.GetEdges(), by)
		if err != nil {
			return "for " + who.String(), err
		}
		out = accessKeyProto(rec)
		out.SecretAccessKey = secret
		if rec.EdgeScoped() {
			return "access key " + rec.ID + " for " + who.String() + " scoped to edges " + strings.Join(rec.Edges, ","), nil
		}
		return "access key " + rec.ID + " for " + who.String(), nil
	})
	return out, err
}

// ListAccessKeys lists every access key, without secrets.
func (a *keyAdmin) ListAccessKeys(ctx context.Context, _ *kbv1.ListAccessKeysRequest) (*kbv1.ListAccessKeysResponse, error) {
	out := &kbv1.ListAccessKeysResponse{}
	err := a.accessKeyOp(ctx, policy.ListAccessKeys, func(ctx context.Context, _ string) (string, error) {
		recs, err := a.s.svc.AccessKeys(ctx)
		for _, rec := range recs {
			out.AccessKeys = append(out.AccessKeys, accessKeyProto(rec))
		}
		return "", err
	})
	return out, err
}

// RevokeAccessKey refuses every request signed with the key from now on.
func (a *keyAdmin) RevokeAccessKey(ctx context.Context, r *kbv1.AccessKeyRequest) (*kbv1.AccessKey, error) {
	var out *kbv1.AccessKey
	err := a.accessKeyOp(ctx, policy.RevokeAccessKey, func(ctx context.Context, by string) (string, error) {
		rec, err := a.s.svc.RevokeAccessKey(ctx, r.GetAccessKeyId(), by)
		if err != nil {
			return "access key " + clip.Quote(r.GetAccessKeyId()), err
		}
		if a.s.revoked != nil {
			a.s.revoked(rec.ID)
		}
		out = accessKeyProto(rec)
		return "access key " + rec.ID + " of " + rec.Principal + " revoked", nil
	})
	return out, err
}

// principal reads CreateAccessKey's principal: a SPIFFE id of this trust
// domain, or kind/name in it.
func (a *keyAdmin) principal(p string) (identity.Identity, error) {
	if !strings.HasPrefix(p, "spiffe://") {
		p = "spiffe://" + a.s.td + "/" + p
	}
	who, err := identity.Parse(p)
	if err != nil {
		return identity.Identity{}, managed.Errorf(managed.ErrInvalidArgument, "principal: %v (give client/NAME or admin/NAME)", err)
	}
	if who.TrustDomain != a.s.td {
		return identity.Identity{}, managed.Errorf(managed.ErrInvalidArgument, "principal %s is not in trust domain %s", who, a.s.td)
	}
	return who, nil
}

func accessKeyProto(r *accesskey.Record) *kbv1.AccessKey {
	out := &kbv1.AccessKey{AccessKeyId: r.ID, Principal: r.Principal, State: string(r.State),
		Created: timestamppb.New(r.Created), CreatedBy: r.CreatedBy, RevokedBy: r.RevokedBy, Edges: r.Edges}
	if !r.Revoked.IsZero() {
		out.Revoked = timestamppb.New(r.Revoked)
	}
	return out
}
