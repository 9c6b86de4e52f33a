package server

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net/http"
	"regexp"
	"strings"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/keybroker/keybroker/accesskey"
	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/awsjson"
	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/broker/store"
	"github.com/keybroker/keybroker/identity"
	"github.com/keybroker/keybroker/internal/callinfo"
	"github.com/keybroker/keybroker/internal/sigv4"
	"github.com/keybroker/keybroker/placement"
	"github.com/keybroker/keybroker/sealed"
	"github.com/keybroker/keybroker/secret"
)

// AWSFront is an AWS front-end that answers requests edges relay
// (awsjson.Server, xks.Server).
type AWSFront interface {
	ServeForwarded(w http.ResponseWriter, r *http.Request, body []byte, signingKey awsjson.SigningKeyFunc, claim awsjson.ClaimFunc)
}

// AWSFronts is what ForwardAWS relays to: the node's front-ends by name
// ("aws_kms", "xks") and the signing keys that verify what an edge relays
// (awsjson.Cached.Via).
type AWSFronts struct {
	Fronts map[string]AWSFront
	Via    func(edge string) awsjson.SigningKeyFunc
}

// awsFronts is set once the node's front-ends are built (SetAWSFronts).
type awsFronts = atomic.Pointer[AWSFronts]

// SetAWSFronts gives ForwardAWS the node's AWS front-ends; until then, and
// for a front-end the node does not serve, edges' relays are refused.
func (s *Server) SetAWSFronts(f AWSFronts) { s.fronts.Store(&f) }

// Bounds of what an edge may relay: AWS front-end requests are small
// (awsjson.MaxBody, xks.MaxBody), and headers are few.
const (
	maxRelayedBody    = 1 << 20
	maxRelayedHeaders = 64
	maxRelayedHeader  = 64 << 10 // all names and values together
)

var (
	scopeRegionRe = regexp.MustCompile(`^[a-z0-9-]{1,32}$`)
	awsServices   = map[string]bool{awsjson.Service: true, "kms-xks-proxy": true}
)

// SigningKey gives an edge the signing key of an access key scoped to it,
// for one day (today, yesterday or tomorrow in UTC: the days a request
// within SigV4's clock skew can be dated), region and service, sealed to
// the edge's registered key under the signing-key domain of package
// sealed. A key not scoped to the edge is refused PermissionDenied, an
// unknown or revoked key NotFound; every answer is audited with the edge as
// the actor.
func (e *edgeSync) SigningKey(ctx context.Context, r *kbv1.EdgeSigningKeyRequest) (*kbv1.EdgeSigningKeyResponse, error) {
	tctx, c, err := e.s.Begin(ctx, "EdgeSigningKey", "")
	if err != nil {
		return nil, err
	}
	node, err := callingEdge(tctx, e.s, c)
	if err != nil {
		return nil, e.s.End(tctx, c, err)
	}
	scope := sealed.SigningScope{AccessKeyID: r.GetAccessKeyId(), Date: r.GetDate(), Region: r.GetRegion(), Service: r.GetService()}
	if err := e.checkScope(scope); err != nil {
		return nil, e.s.End(tctx, c, err)
	}
	c.SetDetail("access key " + scope.AccessKeyID + " for " + scope.Date + "/" + scope.Region + "/" + scope.Service)
	key, who, err := e.s.svc.EdgeSigningKey(tctx, node.ID, scope.AccessKeyID, scope.Date, scope.Region, scope.Service)
	if errors.Is(err, broker.ErrNotScoped) {
		c.Deny("access-key-scope")
	}
	if err != nil {
		return nil, e.s.End(tctx, c, err)
	}
	sk := secret.New(key)
	defer sk.Destroy()
	blob, err := sealed.SealSigningKey(node.SealingKey, node.ID, scope, sk)
	if err != nil {
		return nil, e.s.End(tctx, c, err)
	}
	c.Allow("")
	c.SetDetail("access key " + scope.AccessKeyID + " of " + who.String() + " for " + scope.Date + "/" + scope.Region + "/" + scope.Service)
	return &kbv1.EdgeSigningKeyResponse{SealedSigningKey: blob, Principal: who.String()}, e.s.End(tctx, c, nil)
}

// checkScope refuses a scope that no request within SigV4's clock skew
// could carry: an edge is given no signing key for days to come.
func (e *edgeSync) checkScope(s sealed.SigningScope) error {
	if !accesskey.ValidID(s.AccessKeyID) {
		return status.Errorf(codes.InvalidArgument, "access_key_id is not %s and 16 base32 characters", accesskey.IDPrefix)
	}
	if !awsServices[s.Service] || !scopeRegionRe.MatchString(s.Region) {
		return status.Error(codes.InvalidArgument, "the scope's service must be kms or kms-xks-proxy, and its region an AWS region name")
	}
	day, err := time.Parse("20060102", s.Date)
	if err != nil {
		return status.Error(codes.InvalidArgument, "the scope's date must be YYYYMMDD")
	}
	today := e.s.proofs.now().UTC().Truncate(24 * time.Hour)
	if d := day.Sub(today); d > 24*time.Hour || d < -24*time.Hour {
		return status.Errorf(codes.InvalidArgument, "the scope's date %s is not within a day of today (%s)", s.Date, today.Format("20060102"))
	}
	return nil
}

// ForwardAWS performs an AWS front-end request an edge relays, as the
// client signed it: the node's front-end verifies the signature exactly as
// its own listener would, except that keys scoped to the calling edge are
// accepted (broker.Service.SigningKeyVia), and spends the signature once,
// across the central tier (claimSignature), before the request runs — so
// an edge can neither alter a request (the signature fails) nor run it
// twice. The edge's own right to relay is a Cedar decision (Forward,
// principal Edge, resource Service, context operation "aws_kms" or "xks"
// and admin), default deny, as for gRPC forwards. The request is then
// authorized and audited as the key's principal, with the edge named as
// Via. Refusals of the relay itself are audited with the edge as the
// actor.
func (e *edgeSync) ForwardAWS(ctx context.Context, r *kbv1.ForwardAWSRequest) (*kbv1.ForwardAWSResponse, error) {
	tctx, c, err := e.s.Begin(ctx, "ForwardAWS", "")
	if err != nil {
		return nil, err
	}
	node, err := callingEdge(tctx, e.s, c)
	if err != nil {
		return nil, e.s.End(tctx, c, err)
	}
	fronts := e.s.fronts.Load()
	var front AWSFront
	if fronts != nil {
		front = fronts.Fronts[r.GetFront()]
	}
	if front == nil || fronts.Via == nil {
		return nil, e.s.End(tctx, c, status.Error(codes.FailedPrecondition, "this central node does not serve that AWS front-end (aws_kms, xks)"))
	}
	req, err := relayedRequest(ctx, r)
	if err != nil {
		return nil, e.s.End(tctx, c, err)
	}
	// The edge's own right to relay, decided as for gRPC forwards
	// (Forward, default deny; the operation is the front-end, admin
	// whether the signer is an admin) once the signature names the
	// principal, and before the signature is spent.
	via := fronts.Via(node.ID)
	var who identity.Identity
	signingKey := func(ctx context.Context, id, date, region, service string) ([]byte, identity.Identity, error) {
		key, w, err := via(ctx, id, date, region, service)
		who = w
		return key, w, err
	}
	var denied error
	claim := func(ctx context.Context, v sigv4.Verified) error {
		edgeP := placement.EdgePrincipal(node.Placement(), c.Who().TrustDomain)
		if denied = c.Decide(e.s.policy.Current().AuthorizeForward(edgeP, nil, r.GetFront(), who.Kind == identity.Admin)); denied != nil {
			return awsjson.ErrRelayRefused
		}
		return e.claimSignature(ctx, v)
	}
	rec := &recorder{header: http.Header{}}
	front.ServeForwarded(rec, req.WithContext(callinfo.WithForwarder(ctx, node.ID)), r.GetBody(), signingKey, claim)
	if denied != nil {
		c.SetDetail("relay " + r.GetFront() + " for " + who.String())
		_ = e.s.End(tctx, c, denied) // audited with the edge as the actor; the client gets AccessDenied
	}
	out := &kbv1.ForwardAWSResponse{Status: int32(rec.status()), Body: rec.body.Bytes()}
	for name, values := range rec.header {
		out.Headers = append(out.Headers, &kbv1.HTTPHeader{Name: name, Values: values})
	}
	return out, nil
}

// relayedRequest rebuilds the client's HTTP request from what the edge
// relayed, within bounds.
func relayedRequest(ctx context.Context, r *kbv1.ForwardAWSRequest) (*http.Request, error) {
	size := 0
	for _, h := range r.GetHeaders() {
		size += len(h.GetName())
		for _, v := range h.GetValues() {
			size += len(v)
		}
	}
	switch {
	case len(r.GetBody()) > maxRelayedBody:
		return nil, status.Errorf(codes.InvalidArgument, "a relayed body of %d bytes: at most %d", len(r.GetBody()), maxRelayedBody)
	case len(r.GetHeaders()) > maxRelayedHeaders || size > maxRelayedHeader:
		return nil, status.Errorf(codes.InvalidArgument, "relayed headers: at most %d, %d bytes in all", maxRelayedHeaders, maxRelayedHeader)
	case r.GetMethod() == "" || len(r.GetUri()) > 8192 || len(r.GetHost()) > 256 || !strings.HasPrefix(r.GetUri(), "/") || strings.HasPrefix(r.GetUri(), "//"):
		return nil, status.Error(codes.InvalidArgument, "a relayed request needs a method, a URI path (and query) of at most 8 KiB and a host of at most 256 bytes")
	}
	req, err := http.NewRequestWithContext(ctx, r.GetMethod(), "https://relayed"+r.GetUri(), bytes.NewReader(r.GetBody()))
	if err != nil || req.URL.Host != "relayed" {
		return nil, status.Error(codes.InvalidArgument, "the relayed method or URI is malformed")
	}
	req.Host = r.GetHost()
	req.RequestURI = r.GetUri()
	for _, h := range r.GetHeaders() {
		for _, v := range h.GetValues() {
			req.Header.Add(h.GetName(), v)
		}
	}
	req.ContentLength = int64(len(r.GetBody()))
	return req, nil
}

// claimSignature spends a relayed request's signature: in this node's
// replay cache and, with several centrals on one store, across the tier
// (the claim forward proofs' nonces use), until SigV4's clock skew makes
// the signature stale anyway.
func (e *edgeSync) claimSignature(ctx context.Context, v sigv4.Verified) error {
	sum := sha256.Sum256(append([]byte("keybroker/v1/aws-signature\x00"), v.Signature...))
	nonce := [16]byte(sum[:16])
	now := e.s.proofs.now()
	expires := v.Date.Add(sigv4.DefaultMaxSkew)
	err := e.s.proofs.seen.add(nonce, expires, now)
	if err == nil && e.s.proofs.claim != nil {
		err = e.s.proofs.claim.Claim(ctx, "aws-signatures", hex.EncodeToString(nonce[:]), max(expires.Sub(now), time.Second))
		if errors.Is(err, store.ErrConflict) {
			err = errReplay
		}
	}
	if errors.Is(err, errReplay) {
		return awsjson.ErrReplayed
	}
	return err
}

// recorder keeps a front-end's answer for ForwardAWS's response.
type recorder struct {
	header http.Header
	code   int
	body   bytes.Buffer
}

func (r *recorder) Header() http.Header { return r.header }

func (r *recorder) WriteHeader(code int) {
	if r.code == 0 {
		r.code = code
	}
}

func (r *recorder) Write(b []byte) (int, error) {
	r.WriteHeader(http.StatusOK)
	if r.body.Len()+len(b) > maxRelayedBody {
		return 0, errors.New("an answer larger than a relay carries")
	}
	return r.body.Write(b)
}

func (r *recorder) status() int {
	if r.code == 0 {
		return http.StatusOK
	}
	return r.code
}
