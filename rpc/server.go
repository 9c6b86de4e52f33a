// Package rpc is the gRPC front-end every keybroker node shares: the
// KeyBroker service over mutual TLS. It authenticates calls, gives them
// request ids, converts requests to the inputs of package pipeline and
// results back, and maps errors to gRPC statuses; the pipeline resolves,
// authorizes, checks, performs (through the node's Performer: the central
// tier's service, or an edge's cache) and audits. The central tier adds
// KeyAdmin and EdgeSync on the same audited Calls (Server.Begin, End).
//
// # Every call
//
// A call is authenticated (the client certificate's SPIFFE id, or
// Unauthenticated), given a request id (the node's own, fresh for the
// call, unless the caller is a node — an edge or a central — carrying the
// id of the request it acts for; a client's or admin's well-formed
// x-request-id is kept as the audit line's client_request_id, never taken
// as the request id; both are sent back in the response header, as
// x-request-id and x-client-request-id), and handed to the pipeline as a
// pipeline.Caller. The ids travel in the call's context (package
// internal/callinfo), so a call an edge makes on the request's behalf
// carries them, and a call an edge forwards reaches the central tier with
// the same request id and the client's identity (callinfo.WithForwarder),
// so the two audit lines join up. If the audit line cannot be written the
// response is withheld and the caller gets Unavailable: there are no
// unaudited operations.
//
// # Existence is not leaked
//
// An unknown key is authorized as a key with no labels (package pipeline):
// a caller the policy would not let near such a key gets PermissionDenied,
// not NotFound. A key's root key URI is told to admins only (KeyMetadata).
//
// # Errors
//
// Errors map to gRPC codes here and only here (Server.Status): managed
// errors by kind (errors.As, errors.Is) — InvalidArgument (bad input,
// malformed or foreign ciphertext, wrong context), NotFound,
// AlreadyExists, FailedPrecondition (disabled or pending-deletion keys,
// versions below the minimum), Aborted (revision conflicts),
// PermissionDenied, Unavailable, ResourceExhausted (a spent budget). Errors
// the node knows better (a root of trust's, at the central tier) go
// through Config.Classify; their text reaches admins only. Anyone else gets
// the code and a generic message naming the request id, and the audit line
// keeps the text.
package rpc

import (
	"context"
	"errors"
	"log/slog"
	"regexp"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/audit"
	"github.com/keybroker/keybroker/identity"
	"github.com/keybroker/keybroker/internal/callinfo"
	"github.com/keybroker/keybroker/internal/wire"
	"github.com/keybroker/keybroker/managed"
	"github.com/keybroker/keybroker/pipeline"
	"github.com/keybroker/keybroker/policy"
)

// Config assembles a Server.
type Config struct {
	// Performer performs the operations at this node (pipeline.Performer).
	Performer pipeline.Performer
	// Admin performs the admin operations (pipeline.Admin); nil at an
	// edge.
	Admin       pipeline.Admin
	Policy      pipeline.Policies
	Audit       *audit.Log
	NodeID      string
	TrustDomain string
	// Classify maps errors this package does not know to a status (nil:
	// Internal).
	Classify func(error) (*status.Status, bool)
	Logger   *slog.Logger
}

// Server serves KeyBroker through a pipeline and runs audited Calls for
// the node's other gRPC services.
type Server struct {
	pipe     *pipeline.Pipeline
	audit    *audit.Log
	id       string
	td       string
	classify func(error) (*status.Status, bool)
	log      *slog.Logger
}

// New builds a Server.
func New(c Config) (*Server, error) {
	if c.Performer == nil || c.Policy == nil || c.Audit == nil || c.NodeID == "" || c.TrustDomain == "" {
		return nil, errors.New("rpc: performer, policy, audit, node id and trust domain are required")
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Server{audit: c.Audit, id: c.NodeID, td: c.TrustDomain, classify: c.Classify, log: c.Logger}
	var err error
	s.pipe, err = pipeline.New(pipeline.Config{Performer: c.Performer, Admin: c.Admin, Policy: c.Policy, Audit: c.Audit, NodeID: c.NodeID,
		Outcome: s.outcome, Logger: c.Logger})
	if err != nil {
		return nil, err
	}
	return s, nil
}

// Pipeline is the pipeline the server's calls go through, for other
// front-ends of the node to share (one decision cache, one audit).
func (s *Server) Pipeline() *pipeline.Pipeline { return s.pipe }

// KeyDecisionsMade counts the policy decisions on keys this server has
// evaluated because its decision cache did not hold them.
func (s *Server) KeyDecisionsMade() uint64 { return s.pipe.KeyDecisionsMade() }

// KeyBroker is the KeyBroker service.
func (s *Server) KeyBroker() kbv1.KeyBrokerServer { return &keyBroker{s: s} }

// outcome names a failed call for its audit line: the status code and the
// message before the admin-only rule (End) withholds a root of trust's.
func (s *Server) outcome(err error) (string, string) {
	st, _ := s.status(err)
	return st.Code().String(), st.Message()
}

var reqIDRe = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)

// carriesRequestIDs says whether a caller of this kind is trusted to name
// the request it acts for: nodes are (an edge forwards and fetches under
// its own call's id, so the edge's and the central tier's audit lines
// join); clients and admins are not, or one could make its calls read in
// the audit log as part of someone else's request.
func carriesRequestIDs(k identity.Kind) bool {
	return k == identity.Edge || k == identity.Central
}

// incomingID is the single well-formed value of header name, or "".
func incomingID(ctx context.Context, name string) string {
	// ValueFromIncomingContext copies the one header, not the whole metadata.
	if v := metadata.ValueFromIncomingContext(ctx, name); len(v) == 1 && reqIDRe.MatchString(v[0]) {
		return v[0]
	}
	return ""
}

// authenticate assigns a call its request id and identity, auditing calls
// refused for want of an identity.
func (s *Server) authenticate(ctx context.Context, fullMethod string, req any) (context.Context, error) {
	sent, sentClient := incomingID(ctx, callinfo.RequestIDHeader), incomingID(ctx, callinfo.ClientRequestIDHeader)
	id, idErr := identity.FromPeer(ctx, s.td)
	rid, crid := "", sent
	if idErr == nil && carriesRequestIDs(id.Kind) {
		rid, crid = sent, sentClient
	}
	if rid == "" {
		rid = callinfo.NewRequestID()
	}
	hdr := metadata.Pairs(callinfo.RequestIDHeader, rid)
	if crid != "" {
		hdr.Set(callinfo.ClientRequestIDHeader, crid)
	}
	_ = grpc.SetHeader(ctx, hdr)
	ctx = callinfo.NewContext(ctx, &callinfo.Info{RequestID: rid, ClientRequestID: crid, Method: fullMethod, Request: req})
	if idErr != nil {
		rec := audit.Record{RequestID: rid, ClientRequestID: crid, Node: s.id, Operation: audit.Operation(callinfo.MethodName(fullMethod)),
			Decision: audit.Deny, Outcome: codes.Unauthenticated.String(), Detail: idErr.Error()}
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

// CallerOf is the pipeline's Caller for the authenticated call ctx
// belongs to: its identity, request ids and forwarding edge.
func CallerOf(ctx context.Context) (pipeline.Caller, error) {
	who, ok := identity.FromContext(ctx)
	if !ok {
		return pipeline.Caller{}, status.Error(codes.Unauthenticated, "no identity")
	}
	return pipeline.Caller{Who: who, RequestID: callinfo.RequestID(ctx), ClientRequestID: callinfo.ClientRequestID(ctx),
		Via: callinfo.Forwarder(ctx)}, nil
}

// Begin starts an audited call of one of the node's gRPC services: op on
// key ("" for none) by the identity in ctx. Perform the call under the
// context it returns (it traces backend calls) and finish with End.
func (s *Server) Begin(ctx context.Context, op policy.Action, key string) (context.Context, *pipeline.Call, error) {
	caller, err := CallerOf(ctx)
	if err != nil {
		return ctx, nil, err
	}
	ctx, c := s.pipe.Begin(ctx, caller, op, key)
	return ctx, c, nil
}

// End audits c (pipeline.Call.End) and turns err into a gRPC status.
func (s *Server) End(ctx context.Context, c *pipeline.Call, err error) error {
	return s.answer(c.Caller(), c.Operation(), c.Key(), c.End(ctx, err))
}

// Answer turns the error of a pipeline call made for caller — op on key
// ("" for none), already audited by the pipeline — into what the caller
// is told, as End does.
func (s *Server) Answer(caller pipeline.Caller, op policy.Action, key string, err error) error {
	return s.answer(caller, audit.Operation(op), key, err)
}

// answer turns the error of an audited call into what the caller is told.
// If the audit line could not be written, the call fails whatever it did.
// A root of trust's own error text (what Config.Classify maps) reaches
// only admins; anyone else gets the code and a generic message with the
// request id, and the audit line and the log keep the detail.
func (s *Server) answer(caller pipeline.Caller, op audit.Operation, key string, err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, pipeline.ErrAuditDown) {
		return auditDown{}
	}
	st, private := s.status(err)
	if private && !caller.Admin() {
		s.log.Info("root of trust error withheld from the caller", "request_id", caller.RequestID, "err", st.Message())
		st = status.Newf(st.Code(), "%s (request id %s)", backendErrorMsg, caller.RequestID)
	}
	attrs := []any{"request_id", caller.RequestID, "op", string(op), "key", key,
		"principal", caller.Who.String(), "code", st.Code().String()}
	if st.Code() == codes.Internal {
		// The caller sees "internal error"; the operator sees why.
		s.log.Error("call failed", append(attrs, "err", err.Error())...)
	} else {
		s.log.Info("call failed", attrs...)
	}
	return st.Err()
}

// KeyMetadata is k's metadata as a caller may see it: the root key URI is
// left out for anyone but an admin. It names where the key's material
// lives (a token, a cloud key), which no client needs and an attacker
// would like to know.
func KeyMetadata(k *managed.Key, admin bool) *kbv1.KeyMetadata {
	m := wire.KeyToProto(k)
	if !admin {
		m.RootKey = ""
	}
	return m
}

// AuditDownMsg is what a caller hears when the audit log cannot be written.
const AuditDownMsg = "audit log unavailable: the operation is refused"

// ErrAuditDown is behind the error of a call refused because its audit
// line could not be written (errors.Is): the status the caller gets is
// Unavailable with AuditDownMsg, and a batch stops at it rather than going
// on unaudited. It is pipeline.ErrAuditDown.
var ErrAuditDown = pipeline.ErrAuditDown

// auditDown is the error End returns when the audit log is down: a gRPC
// status (Unavailable, AuditDownMsg) that is also ErrAuditDown, so no one
// has to compare status messages to recognise it.
type auditDown struct{}

func (auditDown) Error() string              { return "rpc error: code = Unavailable desc = " + AuditDownMsg }
func (auditDown) GRPCStatus() *status.Status { return status.New(codes.Unavailable, AuditDownMsg) }
func (auditDown) Is(target error) bool       { return target == pipeline.ErrAuditDown }

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
	_, kind := kindOf(err)
	return kind != nil
}

// kindOf is the code and managed kind of err — the Kind of a managed.Error
// (errors.As), else the first kind err wraps (errors.Is) — and a nil kind
// when err has none.
func kindOf(err error) (codes.Code, error) {
	var me *managed.Error
	if errors.As(err, &me) {
		if c, ok := kindCode(me.Kind); ok {
			return c, me.Kind
		}
	}
	if errors.Is(err, managed.ErrConflict) {
		return codes.Aborted, managed.ErrConflict
	}
	for _, k := range managedKinds {
		if errors.Is(err, k.err) {
			return k.code, k.err
		}
	}
	return 0, nil
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
	code, kind := kindOf(err)
	switch {
	case kind == nil:
		return status.New(codes.Internal, "internal error")
	case kind == managed.ErrConflict:
		return status.New(code, msg) // "revision conflict: …" says what Aborted does not
	}
	// The code says the kind; the message need not repeat it.
	return status.New(code, strings.TrimPrefix(msg, kind.Error()+": "))
}
