// Package rpc is the gRPC face every keybroker node shares: the KeyBroker
// service over mutual TLS around a Node — the central tier's service, or
// an edge's cache — with authentication, request ids, authorization and
// audit. The central tier adds KeyAdmin and EdgeSync on the same Calls.
//
// # Every call
//
// A call is authenticated (the client certificate's SPIFFE id, or
// Unauthenticated), given a request id (the node's own, fresh for the
// call, unless the caller is a node — an edge or a central — carrying the
// id of the request it acts for; a client's or admin's well-formed
// x-request-id is kept as the audit line's client_request_id, never taken
// as the request id; both are sent back in the response header, as
// x-request-id and x-client-request-id),
// authorized by the Cedar policy in force against the key's labels, type and
// mode, performed, and written to the audit log — refused calls included —
// before the response leaves. If the audit line cannot be written the
// response is withheld and the caller gets Unavailable: there are no
// unaudited operations. A call an edge forwards reaches the central tier
// with the same request id and the client's identity (WithForwarder), so
// the two audit lines join up.
//
// # Existence is not leaked
//
// An unknown key is authorized as a key with no labels: a caller the
// policy would not let near such a key gets PermissionDenied, not NotFound.
// ListKeys answers only the keys the caller may DescribeKey, in full pages
// whose next-page token is a key it was shown. A key's root key URI is
// told to admins only (Call.KeyToProto).
//
// # Errors
//
// managed errors map to gRPC codes here and only here: InvalidArgument
// (bad input, malformed or foreign ciphertext, wrong context), NotFound,
// AlreadyExists, FailedPrecondition (disabled or pending-deletion keys,
// versions below the minimum), Aborted (revision conflicts),
// PermissionDenied, Unavailable, ResourceExhausted (a spent budget). Errors the node knows better (a root of
// trust's, at the central tier) go through Config.Classify; their text
// reaches admins only. Anyone else gets the code and a generic message
// naming the request id, and the audit line keeps the text.
package rpc

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/audit"
	"github.com/keybroker/keybroker/identity"
	"github.com/keybroker/keybroker/managed"
	"github.com/keybroker/keybroker/placement"
	"github.com/keybroker/keybroker/policy"
	"github.com/keybroker/keybroker/secret"
)

// Node performs the KeyBroker operations at one node. Its errors are
// managed errors, gRPC statuses (passed through as they are), or errors
// Config.Classify knows.
type Node interface {
	managed.KeySource
	Encrypt(ctx context.Context, id string, plaintext []byte, ectx map[string]string) ([]byte, *managed.Key, error)
	Decrypt(ctx context.Context, ciphertext []byte, ectx map[string]string, expectKey string) ([]byte, *managed.Key, uint32, error)
	// GenerateDataKey returns the wrapped form only when wrapped is set.
	GenerateDataKey(ctx context.Context, id string, ectx map[string]string, wrapped bool) (*managed.DataKey, error)
	DecryptDataKey(ctx context.Context, id string, v uint32, wrapped []byte, ectx map[string]string) (*secret.Bytes, *managed.Key, error)
	Sign(ctx context.Context, id string, msg []byte, digest bool) ([]byte, *managed.Key, error)
	PublicKey(ctx context.Context, id string, v uint32) ([]byte, *managed.Key, uint32, error)
	Verify(ctx context.Context, id string, v uint32, msg []byte, digest bool, sig []byte) (bool, uint32, error)
	GenerateMac(ctx context.Context, id string, msg []byte) ([]byte, *managed.Key, error)
	VerifyMac(ctx context.Context, id string, v uint32, msg, tag []byte) (bool, uint32, error)
	GenerateRandom(ctx context.Context, n int) ([]byte, error)
	// ListKeys pages through the keys the selector matches and visible
	// keeps (managed.Page).
	ListKeys(ctx context.Context, selector map[string]string, pageSize int, token string, visible func(*managed.Key) bool) ([]*managed.Key, string, error)
	// LookupKey lists the nodes able to perform op with k now, best first.
	// Package placement decides it (placement.Lookup).
	LookupKey(ctx context.Context, k *managed.Key, op policy.Action, clientLabels map[string]string) ([]placement.Candidate, error)
	// Served names what performs op on k, for the audit line: a root of
	// trust at the central tier; the cache or the central tier at an edge.
	Served(k *managed.Key, op policy.Action) string
}

// Policies gives the policy set in force.
type Policies interface {
	Current() *policy.Set
}

// Config assembles a Server.
type Config struct {
	Node        Node
	Policy      Policies
	Audit       *audit.Log
	NodeID      string
	TrustDomain string
	// Classify maps errors this package does not know to a status (nil:
	// Internal).
	Classify func(error) (*status.Status, bool)
	Logger   *slog.Logger
}

// Server serves KeyBroker for a Node and runs Calls for the node's other
// services.
type Server struct {
	node     Node
	policy   Policies
	audit    *audit.Log
	id       string
	td       string
	classify func(error) (*status.Status, bool)
	log      *slog.Logger
	// decisions remembers policy decisions on keys.
	decisions decisionCache
}

// New builds a Server.
func New(c Config) (*Server, error) {
	if c.Node == nil || c.Policy == nil || c.Audit == nil || c.NodeID == "" || c.TrustDomain == "" {
		return nil, errors.New("rpc: node, policy, audit, node id and trust domain are required")
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return &Server{node: c.Node, policy: c.Policy, audit: c.Audit, id: c.NodeID, td: c.TrustDomain, classify: c.Classify, log: c.Logger}, nil
}

// KeyDecisionsMade counts the policy decisions on keys this server has
// evaluated because its decision cache did not hold them.
func (s *Server) KeyDecisionsMade() uint64 { return s.decisions.made.Load() }

// KeyBroker is the KeyBroker service.
func (s *Server) KeyBroker() kbv1.KeyBrokerServer { return &keyBroker{s: s} }

// callKey keys a call's callInfo in its context: one value for the
// request ids and the incoming call, so that a call costs one context
// value, not three.
type callKey struct{}

// callInfo is what authentication learns about a call.
type callInfo struct {
	rid, crid string
	method    string
	req       any
}

func callOf(ctx context.Context) *callInfo {
	ci, _ := ctx.Value(callKey{}).(*callInfo)
	return ci
}

var reqIDRe = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)

func newRequestID() string {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// RequestID returns the request id of a call.
func RequestID(ctx context.Context) string {
	if ci := callOf(ctx); ci != nil {
		return ci.rid
	}
	return ""
}

// ClientRequestID returns the request id the call's originating client
// chose, if it sent one: its own correlation id, not the audit's.
func ClientRequestID(ctx context.Context) string {
	if ci := callOf(ctx); ci != nil {
		return ci.crid
	}
	return ""
}

// OutgoingRequestID returns ctx with the call's request id (and the
// client's, if any) set on outgoing gRPC metadata, so a call made on its
// behalf — an edge forwarding or fetching for it — carries the same ids.
// Only a node the receiver trusts to name requests gets its id taken.
func OutgoingRequestID(ctx context.Context) context.Context {
	if rid := RequestID(ctx); rid != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "x-request-id", rid)
	}
	if crid := ClientRequestID(ctx); crid != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "x-client-request-id", crid)
	}
	return ctx
}

// carriesRequestIDs says whether a caller of this kind is trusted to name
// the request it acts for: nodes are (an edge forwards and fetches under
// its own call's id, so the edge's and the central tier's audit lines
// join); clients and admins are not, or one could make its calls read in
// the audit log as part of someone else's request.
func carriesRequestIDs(k identity.Kind) bool {
	return k == identity.Edge || k == identity.Central
}

// incomingID is the single well-formed value of header name, or "".
func incomingID(md metadata.MD, name string) string {
	if v := md.Get(name); len(v) == 1 && reqIDRe.MatchString(v[0]) {
		return v[0]
	}
	return ""
}

type viaKey struct{}

// WithForwarder marks ctx as a call forwarded by an edge on behalf of the
// identity ctx carries; the audit line names the edge.
func WithForwarder(ctx context.Context, edge string) context.Context {
	return context.WithValue(ctx, viaKey{}, edge)
}

// Forwarder returns the edge that forwarded the call, if any.
func Forwarder(ctx context.Context) string {
	v, _ := ctx.Value(viaKey{}).(string)
	return v
}

// authenticate assigns a call its request id and identity, auditing calls
// refused for want of an identity.
func (s *Server) authenticate(ctx context.Context, fullMethod string, req any) (context.Context, error) {
	var sent, sentClient string
	if md, ok := metadata.FromIncomingContext(ctx); ok {
		sent, sentClient = incomingID(md, "x-request-id"), incomingID(md, "x-client-request-id")
	}
	id, idErr := identity.FromPeer(ctx, s.td)
	rid, crid := "", sent
	if idErr == nil && carriesRequestIDs(id.Kind) {
		rid, crid = sent, sentClient
	}
	if rid == "" {
		rid = newRequestID()
	}
	hdr := metadata.Pairs("x-request-id", rid)
	if crid != "" {
		hdr.Set("x-client-request-id", crid)
	}
	_ = grpc.SetHeader(ctx, hdr)
	ctx = context.WithValue(ctx, callKey{}, &callInfo{rid: rid, crid: crid, method: fullMethod, req: req})
	if idErr != nil {
		rec := audit.Record{RequestID: rid, ClientRequestID: crid, Node: s.id, Operation: MethodName(fullMethod),
			Decision: "deny", Outcome: codes.Unauthenticated.String(), Detail: idErr.Error()}
		if aerr := s.audit.Append(rec); aerr != nil {
			s.log.Error("audit append failed", "err", aerr)
		}
		return nil, status.Error(codes.Unauthenticated, idErr.Error())
	}
	return identity.NewContext(ctx, id), nil
}

// UnaryInterceptor authenticates every unary call, assigns its request id,
// audits calls refused for want of an identity, and keeps the call's method
// and request in the context (IncomingCall).
func (s *Server) UnaryInterceptor() grpc.UnaryServerInterceptor { return s.UnaryInterceptorThen(nil) }

// UnaryInterceptorThen is UnaryInterceptor whose authenticated calls go
// through next (when not nil) rather than straight to the handler: a
// node's own step, run inside this interceptor rather than chained after
// it, since every level of a gRPC chain costs each call an allocation.
func (s *Server) UnaryInterceptorThen(next grpc.UnaryServerInterceptor) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		ctx, err := s.authenticate(ctx, info.FullMethod, req)
		if err != nil {
			return nil, err
		}
		if next != nil {
			return next(ctx, req, info, h)
		}
		return h(ctx, req)
	}
}

// IncomingCall returns the full method and the request message of the
// unary call ctx belongs to, as the caller sent them: what an edge forwards
// must be the call its client signed, not a rebuilt one.
func IncomingCall(ctx context.Context) (method string, req proto.Message, ok bool) {
	in := callOf(ctx)
	if in == nil || in.req == nil {
		return "", nil, false
	}
	req, ok = in.req.(proto.Message)
	return in.method, req, ok
}

type authedStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (a authedStream) Context() context.Context { return a.ctx }

// StreamInterceptor does for streaming calls what UnaryInterceptor does.
func (s *Server) StreamInterceptor() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		ctx, err := s.authenticate(ss.Context(), info.FullMethod, nil)
		if err != nil {
			return err
		}
		return h(srv, authedStream{ss, ctx})
	}
}

// MethodName is the last element of a full gRPC method name.
func MethodName(full string) string {
	for i := len(full) - 1; i >= 0; i-- {
		if full[i] == '/' {
			return full[i+1:]
		}
	}
	return full
}

// Call follows one operation from authorization to audit.
type Call struct {
	S   *Server
	Ctx context.Context
	Who identity.Identity
	Rec audit.Record
}

// Begin starts a call: op on key ("" for none) by the identity in ctx.
func (s *Server) Begin(ctx context.Context, op policy.Action, key string) (*Call, error) {
	who, ok := identity.FromContext(ctx)
	if !ok {
		return nil, status.Error(codes.Unauthenticated, "no identity")
	}
	return &Call{S: s, Ctx: audit.WithTrace(ctx), Who: who, Rec: audit.Record{
		RequestID: RequestID(ctx), ClientRequestID: ClientRequestID(ctx), Principal: who.String(), Node: s.id, Operation: string(op), Key: key, Via: Forwarder(ctx),
	}}, nil
}

// Principal is the caller as Cedar sees it.
func (c *Call) Principal() policy.Principal {
	return policy.Principal{Kind: policy.Kind(c.Who.Kind), Name: c.Who.Name, TrustDomain: c.Who.TrustDomain}
}

// Decide records a policy decision and turns a denial into
// PermissionDenied.
func (c *Call) Decide(d policy.Decision) error {
	c.Rec.PolicyID = d.PolicyID()
	if d.Allowed {
		c.Rec.Decision = "allow"
		return nil
	}
	c.Rec.Decision = "deny"
	return status.Errorf(codes.PermissionDenied, "%s may not %s %s", c.Who, c.Rec.Operation, describeResource(c.Rec.Key))
}

func describeResource(key string) string {
	if key == "" {
		return "on this service"
	}
	return "key " + key
}

// LookupKey loads the call's key and its Cedar resource. An unknown key
// comes back nil with the resource of a key with no labels, so that the
// policy, not the registry, decides what the caller learns.
func (c *Call) LookupKey() (*managed.Key, policy.Key, error) {
	k, err := c.S.node.Get(c.Ctx, c.Rec.Key)
	switch {
	case err == nil:
		return k, k.PolicyKey(), nil
	case errors.Is(err, managed.ErrNotFound):
		return nil, policy.Key{Name: c.Rec.Key}, nil
	}
	return nil, policy.Key{}, err
}

// AuthorizeKey loads the key and asks the policy. An unknown key is
// authorized as a key with no labels, so existence is not leaked.
func (c *Call) AuthorizeKey(op policy.Action) (*managed.Key, error) {
	k, res, err := c.LookupKey()
	if err != nil {
		return nil, err
	}
	if k != nil {
		c.Rec.Backend = c.S.node.Served(k, op)
	}
	set := c.S.policy.Current()
	var dec policy.Decision
	if k != nil {
		dec = c.S.decisions.decide(set, c.Who, op, k, func() policy.Decision { return set.AuthorizeKey(c.Principal(), op, res) })
	} else {
		dec = set.AuthorizeKey(c.Principal(), op, res)
	}
	if derr := c.Decide(dec); derr != nil {
		return nil, derr
	}
	if k == nil {
		return nil, fmt.Errorf("%w: key %q does not exist", managed.ErrNotFound, c.Rec.Key)
	}
	return k, nil
}

// AuthorizeService asks the policy about an operation on no key.
func (c *Call) AuthorizeService(op policy.Action) error {
	return c.Decide(c.S.policy.Current().AuthorizeService(c.Principal(), op))
}

// Admin reports whether the caller is an admin: only admins are told root
// key URIs and a root of trust's own error text.
func (c *Call) Admin() bool { return c.Who.Kind == identity.Admin }

// KeyToProto is k's metadata as this caller may see it: the root key URI
// is left out for anyone but an admin. It names where the key's material
// lives (a token, a cloud key), which no client needs and an attacker
// would like to know.
func (c *Call) KeyToProto(k *managed.Key) *kbv1.KeyMetadata {
	m := KeyToProto(k)
	if !c.Admin() {
		m.RootKey = ""
	}
	return m
}

// End audits the call and turns err into a gRPC status. If the audit line
// cannot be written, the call fails whatever it did. A root of trust's own
// error text (what Config.Classify maps) reaches only admins; anyone else
// gets the code and a generic message with the request id, and the audit
// line and the log keep the detail.
func (c *Call) End(err error) error {
	var st *status.Status
	c.Rec.BackendCalls, c.Rec.BackendCallsDropped = audit.Traced(c.Ctx)
	c.Rec.Outcome = "ok"
	if err != nil {
		var private bool
		st, private = c.S.status(err)
		c.Rec.Outcome = st.Code().String()
		c.Rec.Detail = st.Message()
		if private && !c.Admin() {
			c.S.log.Info("root of trust error withheld from the caller", "request_id", c.Rec.RequestID, "err", st.Message())
			st = status.Newf(st.Code(), "%s (request id %s)", backendErrorMsg, c.Rec.RequestID)
		}
	}
	if aerr := c.S.audit.Append(c.Rec); aerr != nil {
		c.S.log.Error("audit append failed; refusing the call", "request_id", c.Rec.RequestID, "err", aerr)
		return auditDown{}
	}
	if err != nil {
		attrs := []any{"request_id", c.Rec.RequestID, "op", c.Rec.Operation, "key", c.Rec.Key,
			"principal", c.Rec.Principal, "code", st.Code().String()}
		if st.Code() == codes.Internal {
			// The caller sees "internal error"; the operator sees why.
			c.S.log.Error("call failed", append(attrs, "err", err.Error())...)
		} else {
			c.S.log.Info("call failed", attrs...)
		}
		return st.Err()
	}
	return nil
}

// AuditDownMsg is what a caller hears when the audit log cannot be written.
const AuditDownMsg = "audit log unavailable: the operation is refused"

// ErrAuditDown is behind the error of a call refused because its audit
// line could not be written (errors.Is): the status the caller gets is
// Unavailable with AuditDownMsg, and a batch stops at it rather than going
// on unaudited.
var ErrAuditDown = errors.New("rpc: the audit log cannot be written")

// auditDown is the error End returns when the audit log is down: a gRPC
// status (Unavailable, AuditDownMsg) that is also ErrAuditDown, so no one
// has to compare status messages to recognise it.
type auditDown struct{}

func (auditDown) Error() string              { return "rpc error: code = Unavailable desc = " + AuditDownMsg }
func (auditDown) GRPCStatus() *status.Status { return status.New(codes.Unavailable, AuditDownMsg) }
func (auditDown) Is(target error) bool       { return target == ErrAuditDown }

// managedKinds are the managed error kinds and their codes.
var managedKinds = []struct {
	err  error
	code codes.Code
}{
	{managed.ErrInvalidArgument, codes.InvalidArgument},
	{managed.ErrNotFound, codes.NotFound},
	{managed.ErrAlreadyExists, codes.AlreadyExists},
	{managed.ErrFailedPrecondition, codes.FailedPrecondition},
	{managed.ErrPermissionDenied, codes.PermissionDenied},
	{managed.ErrUnavailable, codes.Unavailable},
	{managed.ErrResourceExhausted, codes.ResourceExhausted},
}

// backendErrorMsg is what a caller other than an admin hears of a root of
// trust's error.
const backendErrorMsg = "the root of trust could not perform the operation; an admin can find why in the audit log"

// Status maps an error to a gRPC status.
func (s *Server) Status(err error) *status.Status {
	st, _ := s.status(err)
	return st
}

// status maps an error to a gRPC status; private is set when the message
// is a root of trust's own (Config.Classify's).
func (s *Server) status(err error) (st *status.Status, private bool) {
	if s.classify != nil && err != nil {
		if _, ok := status.FromError(err); !ok || status.Code(err) == codes.Unknown {
			if !isManaged(err) {
				if st, ok := s.classify(err); ok {
					return st, true
				}
			}
		}
	}
	return s.publicStatus(err), false
}

func isManaged(err error) bool {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	_, _, ok := kindOf(err)
	return ok
}

// kindOf is the managed kind of err and its code: the Kind of a
// managed.Error (errors.As), else the first kind err wraps (errors.Is).
func kindOf(err error) (kind error, code codes.Code, ok bool) {
	var me *managed.Error
	if errors.As(err, &me) {
		if c, ok := kindCode(me.Kind); ok {
			return me.Kind, c, true
		}
	}
	if errors.Is(err, managed.ErrConflict) {
		return managed.ErrConflict, codes.Aborted, true
	}
	for _, k := range managedKinds {
		if errors.Is(err, k.err) {
			return k.err, k.code, true
		}
	}
	return nil, 0, false
}

func kindCode(kind error) (codes.Code, bool) {
	if kind == managed.ErrConflict {
		return codes.Aborted, true
	}
	for _, k := range managedKinds {
		if kind == k.err {
			return k.code, true
		}
	}
	return 0, false
}

// publicStatus is Status for errors whose text any caller may read.
func (s *Server) publicStatus(err error) *status.Status {
	if err == nil {
		return status.New(codes.OK, "")
	}
	if st, ok := status.FromError(err); ok && st.Code() != codes.Unknown {
		return st
	}
	msg := err.Error()
	switch {
	case errors.Is(err, context.Canceled):
		return status.New(codes.Canceled, msg)
	case errors.Is(err, context.DeadlineExceeded):
		return status.New(codes.DeadlineExceeded, msg)
	}
	kind, code, ok := kindOf(err)
	switch {
	case !ok:
		return status.New(codes.Internal, "internal error")
	case kind == managed.ErrConflict:
		return status.New(code, msg) // "revision conflict: …" says what Aborted does not
	}
	// The code says the kind; the message need not repeat it.
	return status.New(code, strings.TrimPrefix(msg, kind.Error()+": "))
}
