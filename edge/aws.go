package edge

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/keybroker/keybroker/accesskey"
	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/awsjson"
	"github.com/keybroker/keybroker/config"
	"github.com/keybroker/keybroker/edgecache"
	"github.com/keybroker/keybroker/identity"
	"github.com/keybroker/keybroker/internal/sigv4"
	"github.com/keybroker/keybroker/managed"
	"github.com/keybroker/keybroker/pipeline"
	"github.com/keybroker/keybroker/rpc"
	"github.com/keybroker/keybroker/sealed"
	"github.com/keybroker/keybroker/xks"
)

// startAWS serves the aws_kms and xks front-ends the configuration names,
// through the edge's pipeline (see AWS front-ends in the package doc).
func (n *Node) startAWS(cfg *config.Edge, srv *rpc.Server) error {
	if cfg.AWSKMS == nil && cfg.XKS == nil {
		return nil
	}
	sync := kbv1.NewEdgeSyncClient(n.central)
	n.signingKeys = awsjson.NewCached(&signingKeys{sync: sync, cache: n.cache, td: cfg.TrustDomain}, 10_000)
	sh, log := n.sh, n.log
	if a := cfg.AWSKMS; a != nil {
		front, err := awsjson.New(awsjson.Config{Pipeline: srv.Pipeline(), Status: srv.Status, Credentials: n.signingKeys,
			Region: a.Region, Account: a.Account, TrustDomain: cfg.TrustDomain, Logger: log,
			Relay: &relay{front: "aws_kms", sync: sync, perf: n.perf}})
		if err != nil {
			return err
		}
		if n.awsAddr, err = sh.ServeAWSFront("aws_kms", a.Listen, a.ClientCA, awsjson.MaxBody, front); err != nil {
			return err
		}
	}
	if x := cfg.XKS; x != nil {
		front, err := xks.New(xks.Config{Pipeline: srv.Pipeline(), Status: srv.Status, Credentials: n.signingKeys,
			Region: x.Region, Prefix: x.Prefix, HealthKey: x.HealthKey, Logger: log,
			Relay: &relay{front: "xks", sync: sync, perf: n.perf}})
		if err != nil {
			return err
		}
		if n.xksAddr, err = sh.ServeAWSFront("xks", x.Listen, x.ClientCA, xks.MaxBody, front); err != nil {
			return err
		}
	}
	return nil
}

// signingKeys are the signing keys of the access keys scoped to this edge,
// asked of the central tier (EdgeSync.SigningKey) and opened with the
// edge's sealing key; awsjson.Cached keeps each for CredentialTTL, in
// memory only. Any other key is sigv4.ErrElsewhere: its requests are
// relayed.
type signingKeys struct {
	sync  kbv1.EdgeSyncClient
	cache *edgecache.Cache
	td    string
}

func (s *signingKeys) SigningKey(ctx context.Context, id, date, region, service string) ([]byte, identity.Identity, error) {
	if !accesskey.ValidID(id) {
		return nil, identity.Identity{}, sigv4.ErrElsewhere // the central tier answers it
	}
	out, err := s.sync.SigningKey(ctx, &kbv1.EdgeSigningKeyRequest{AccessKeyId: id, Date: date, Region: region, Service: service})
	switch status.Code(err) {
	case codes.OK:
	case codes.PermissionDenied, codes.NotFound, codes.InvalidArgument:
		// Not scoped here, unknown, revoked, or a scope the central tier
		// gives no key for: its answer to the request is the one.
		return nil, identity.Identity{}, sigv4.ErrElsewhere
	default:
		return nil, identity.Identity{}, fmt.Errorf("edge: the signing key of access key %s: %w", id, err)
	}
	who, err := identity.Parse(out.GetPrincipal())
	if err != nil || who.TrustDomain != s.td || who.Kind != identity.Client {
		return nil, identity.Identity{}, fmt.Errorf("edge: access key %s acts as %q, not a client of %s", id, out.GetPrincipal(), s.td)
	}
	key, err := s.cache.OpenSigningKey(out.GetSealedSigningKey(), sealed.SigningScope{AccessKeyID: id, Date: date, Region: region, Service: service})
	if err != nil {
		return nil, identity.Identity{}, fmt.Errorf("edge: the signing key of access key %s: %w", id, err)
	}
	defer key.Destroy()
	return append([]byte(nil), key.Reveal()...), who, nil
}

// relay is an AWS front-end's way to the central tier (awsjson.Relay).
type relay struct {
	front string
	sync  kbv1.EdgeSyncClient
	perf  *performer
}

// Local: every key is in the replica and the edge performs the
// operation on it from what it holds (as gRPC calls decide).
func (r *relay) Local(ctx context.Context, keys []awsjson.KeyRef) bool {
	for _, ref := range keys {
		k, err := r.perf.Get(ctx, ref.ID)
		if err != nil {
			return false
		}
		if !ref.PublicOnly && r.perf.Forwards(k, managed.OpEncrypt, ref.Version) {
			return false
		}
	}
	return true
}

// Forward relays the request as it came and writes the central tier's
// answer.
func (r *relay) Forward(ctx context.Context, w http.ResponseWriter, req *http.Request, body []byte) error {
	uri := req.RequestURI
	if uri == "" {
		uri = req.URL.RequestURI()
	}
	in := &kbv1.ForwardAWSRequest{Front: r.front, Method: req.Method, Uri: uri, Host: req.Host, Body: body}
	for name, values := range req.Header {
		in.Headers = append(in.Headers, &kbv1.HTTPHeader{Name: name, Values: values})
	}
	out, err := r.sync.ForwardAWS(ctx, in)
	if err != nil {
		return err
	}
	for _, h := range out.GetHeaders() {
		w.Header()[http.CanonicalHeaderKey(h.GetName())] = h.GetValues()
	}
	w.WriteHeader(int(out.GetStatus()))
	_, _ = w.Write(out.GetBody())
	return nil
}

// performer is the edge's pipeline performer (edgecache's) with the XKS
// operations besides, performed from the material the edge holds, as its
// other operations are: managed.Ops over the cache's material.
type performer struct {
	pipeline.Performer
	fwd pipeline.Forwarder
	xks *managed.Ops
}

var (
	_ pipeline.Forwarder    = (*performer)(nil)
	_ managed.XKSOperations = (*performer)(nil)
)

func newPerformer(c *edgecache.Cache) (*performer, error) {
	p := c.Performer()
	fwd, ok := p.(pipeline.Forwarder)
	if !ok {
		return nil, errors.New("edge: the cache's performer does not say what it forwards")
	}
	ops, err := managed.New(managed.Config{Material: c})
	if err != nil {
		return nil, err
	}
	return &performer{Performer: p, fwd: fwd, xks: ops}, nil
}

func (p *performer) Forwards(k *managed.Key, op managed.Operation, v uint32) bool {
	return p.fwd.Forwards(k, op, v)
}

// errXKSHere is an XKS operation on a key whose material this edge may not
// hold: its front-end relays those (relay.Local), so this is a placement
// that changed meanwhile. AWS KMS retries.
func errXKSHere(k *managed.Key) error {
	return managed.Errorf(managed.ErrUnavailable, "key %q is no longer served at this edge: retry", k.ID)
}

func (p *performer) XKSEncrypt(ctx context.Context, k *managed.Key, plaintext, aad []byte) (managed.XKSSealed, error) {
	if p.fwd.Forwards(k, managed.OpEncrypt, 0) {
		return managed.XKSSealed{}, errXKSHere(k)
	}
	return p.xks.XKSEncrypt(ctx, k, plaintext, aad)
}

func (p *performer) XKSDecrypt(ctx context.Context, k *managed.Key, v uint32, aad, metadata, iv, ciphertext, tag []byte) (managed.Decrypted, error) {
	if p.fwd.Forwards(k, managed.OpDecrypt, v) {
		return managed.Decrypted{}, errXKSHere(k)
	}
	return p.xks.XKSDecrypt(ctx, k, v, aad, metadata, iv, ciphertext, tag)
}
