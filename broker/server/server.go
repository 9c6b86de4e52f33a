// Package server is the central tier's gRPC face: the KeyBroker and
// KeyAdmin services over mutual TLS, around broker.Service.
//
// # Every call
//
// A call is authenticated (the client certificate's SPIFFE id, or
// Unauthenticated), given a request id (the caller's x-request-id when it
// is well formed, else a fresh one, echoed in the response header),
// authorized by the Cedar policy in force against the key's labels, type and
// mode, performed, and written to the audit log — refused calls included —
// before the response leaves. If the audit line cannot be written the
// response is withheld and the caller gets Unavailable: there are no
// unaudited operations.
//
// # Existence is not leaked
//
// An unknown key is authorized as a key with no labels: a caller the
// policy would not let near such a key gets PermissionDenied, not NotFound.
//
// # Errors
//
// broker and backend errors map to gRPC codes here and only here:
// InvalidArgument (bad input, malformed or foreign ciphertext, wrong
// context), NotFound, AlreadyExists, FailedPrecondition (disabled or
// pending-deletion keys, versions below the minimum, a root key the backend
// refuses), Aborted (revision conflicts), PermissionDenied,
// ResourceExhausted (backend throttling), Unavailable.
package server

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/audit"
	"github.com/keybroker/keybroker/backends"
	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/identity"
	"github.com/keybroker/keybroker/policy"
)

// Config assembles a Server.
type Config struct {
	Service     *broker.Service
	Policy      *policy.Engine
	Audit       *audit.Log
	NodeID      string
	TrustDomain string
	// Address is this node's advertised gRPC address (LookupKey, ListNodes).
	Address string
	// Heartbeat is how often Watch streams send a heartbeat extending the
	// edge's lease (0: a third of EdgeLease).
	Heartbeat time.Duration
	Logger    *slog.Logger
}

// Server implements the central tier's gRPC services.
type Server struct {
	svc    *broker.Service
	policy *policy.Engine
	audit  *audit.Log
	node   string
	td     string
	addr   string
	log    *slog.Logger
	start  time.Time
	beat   time.Duration
}

// New builds a Server.
func New(c Config) (*Server, error) {
	if c.Service == nil || c.Policy == nil || c.Audit == nil || c.NodeID == "" || c.TrustDomain == "" {
		return nil, errors.New("server: service, policy, audit, node id and trust domain are required")
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Heartbeat <= 0 {
		c.Heartbeat = EdgeLease / 3
	}
	return &Server{svc: c.Service, policy: c.Policy, audit: c.Audit, node: c.NodeID, td: c.TrustDomain,
		addr: c.Address, log: c.Logger, start: time.Now(), beat: c.Heartbeat}, nil
}

// Register adds the KeyBroker, KeyAdmin and EdgeSync services to g.
func (s *Server) Register(g *grpc.Server) {
	kbv1.RegisterKeyBrokerServer(g, &keyBroker{s: s})
	kbv1.RegisterKeyAdminServer(g, &keyAdmin{s: s})
	kbv1.RegisterEdgeSyncServer(g, &edgeSync{s: s})
}

type reqIDKey struct{}

var reqIDRe = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)

func newRequestID() string {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// RequestID returns the request id of a call.
func RequestID(ctx context.Context) string {
	id, _ := ctx.Value(reqIDKey{}).(string)
	return id
}

// authenticate assigns a call its request id and identity, auditing calls
// refused for want of an identity.
func (s *Server) authenticate(ctx context.Context, fullMethod string) (context.Context, error) {
	rid := ""
	if md, ok := metadata.FromIncomingContext(ctx); ok {
		if v := md.Get("x-request-id"); len(v) == 1 && reqIDRe.MatchString(v[0]) {
			rid = v[0]
		}
	}
	if rid == "" {
		rid = newRequestID()
	}
	_ = grpc.SetHeader(ctx, metadata.Pairs("x-request-id", rid))
	ctx = context.WithValue(ctx, reqIDKey{}, rid)
	id, err := identity.FromPeer(ctx, s.td)
	if err != nil {
		rec := audit.Record{RequestID: rid, Node: s.node, Operation: methodName(fullMethod),
			Decision: "deny", Outcome: codes.Unauthenticated.String(), Detail: err.Error()}
		if aerr := s.audit.Append(rec); aerr != nil {
			s.log.Error("audit append failed", "err", aerr)
		}
		return nil, status.Error(codes.Unauthenticated, err.Error())
	}
	return identity.NewContext(ctx, id), nil
}

// UnaryInterceptor authenticates every unary call, assigns its request id,
// and audits calls refused for want of an identity.
func (s *Server) UnaryInterceptor() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		ctx, err := s.authenticate(ctx, info.FullMethod)
		if err != nil {
			return nil, err
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
		ctx, err := s.authenticate(ss.Context(), info.FullMethod)
		if err != nil {
			return err
		}
		return h(srv, authedStream{ss, ctx})
	}
}

func methodName(full string) string {
	for i := len(full) - 1; i >= 0; i-- {
		if full[i] == '/' {
			return full[i+1:]
		}
	}
	return full
}

// call follows one operation from authorization to audit.
type call struct {
	s   *Server
	ctx context.Context
	who identity.Identity
	rec audit.Record
}

func (s *Server) begin(ctx context.Context, op policy.Action, key string) (*call, error) {
	who, ok := identity.FromContext(ctx)
	if !ok {
		return nil, status.Error(codes.Unauthenticated, "no identity")
	}
	return &call{s: s, ctx: ctx, who: who, rec: audit.Record{
		RequestID: RequestID(ctx), Principal: who.String(), Node: s.node, Operation: string(op), Key: key,
	}}, nil
}

func (c *call) principal() policy.Principal {
	return policy.Principal{Kind: policy.Kind(c.who.Kind), Name: c.who.Name, TrustDomain: c.who.TrustDomain}
}

func (c *call) decide(d policy.Decision) error {
	c.rec.PolicyID = d.PolicyID()
	if d.Allowed {
		c.rec.Decision = "allow"
		return nil
	}
	c.rec.Decision = "deny"
	return status.Errorf(codes.PermissionDenied, "%s may not %s %s", c.who, c.rec.Operation, describeResource(c.rec.Key))
}

func describeResource(key string) string {
	if key == "" {
		return "on this service"
	}
	return "key " + key
}

// policyKey is a key as Cedar sees it.
func policyKey(k *broker.Key) policy.Key {
	return policy.Key{Name: k.ID, Type: string(k.Type), Mode: string(k.Mode), Labels: k.Labels}
}

// lookupKey loads the call's key and its Cedar resource. An unknown key
// comes back nil with the resource of a key with no labels, so that the
// policy, not the registry, decides what the caller learns.
func (c *call) lookupKey() (*broker.Key, policy.Key, error) {
	k, err := c.s.svc.Registry().Get(c.ctx, c.rec.Key)
	switch {
	case err == nil:
		return k, policyKey(k), nil
	case errors.Is(err, broker.ErrNotFound):
		return nil, policy.Key{Name: c.rec.Key}, nil
	}
	return nil, policy.Key{}, err
}

// authorizeKey loads the key and asks the policy. An unknown key is
// authorized as a key with no labels, so existence is not leaked.
func (c *call) authorizeKey(op policy.Action) (*broker.Key, error) {
	k, res, err := c.lookupKey()
	if err != nil {
		return nil, err
	}
	if k != nil {
		if pv := k.PrimaryVersion(); pv != nil {
			if _, name, _, rerr := c.s.svc.Roots().Resolve(pv.RootKey); rerr == nil {
				c.rec.Backend = name
			}
		}
	}
	if derr := c.decide(c.s.policy.Current().AuthorizeKey(c.principal(), op, res)); derr != nil {
		return nil, derr
	}
	if k == nil {
		return nil, fmt.Errorf("%w: key %q does not exist", broker.ErrNotFound, c.rec.Key)
	}
	return k, nil
}

func (c *call) authorizeService(op policy.Action) error {
	return c.decide(c.s.policy.Current().AuthorizeService(c.principal(), op))
}

// end audits the call and turns err into a gRPC status. If the audit line
// cannot be written, the call fails whatever it did.
func (c *call) end(err error) error {
	st := toStatus(err)
	c.rec.Outcome = "ok"
	if err != nil {
		c.rec.Outcome = st.Code().String()
		c.rec.Detail = st.Message()
	}
	if aerr := c.s.audit.Append(c.rec); aerr != nil {
		c.s.log.Error("audit append failed; refusing the call", "request_id", c.rec.RequestID, "err", aerr)
		return status.Error(codes.Unavailable, auditDownMsg)
	}
	if err != nil {
		attrs := []any{"request_id", c.rec.RequestID, "op", c.rec.Operation, "key", c.rec.Key,
			"principal", c.rec.Principal, "code", st.Code().String()}
		if st.Code() == codes.Internal {
			// The caller sees "internal error"; the operator sees why.
			c.s.log.Error("call failed", append(attrs, "err", err.Error())...)
		} else {
			c.s.log.Info("call failed", attrs...)
		}
		return st.Err()
	}
	return nil
}

// toStatus maps broker and backend errors to gRPC statuses.
func toStatus(err error) *status.Status {
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
	case errors.Is(err, broker.ErrInvalidArgument):
		return status.New(codes.InvalidArgument, msg)
	case errors.Is(err, broker.ErrNotFound):
		return status.New(codes.NotFound, msg)
	case errors.Is(err, broker.ErrAlreadyExists):
		return status.New(codes.AlreadyExists, msg)
	case errors.Is(err, broker.ErrFailedPrecondition):
		return status.New(codes.FailedPrecondition, msg)
	case errors.Is(err, broker.ErrConflict):
		return status.New(codes.Aborted, msg)
	case errors.Is(err, broker.ErrPermissionDenied):
		return status.New(codes.PermissionDenied, msg)
	case errors.Is(err, broker.ErrUnavailable):
		return status.New(codes.Unavailable, msg)
	}
	// Errors from a root of trust.
	switch backends.CodeOf(err) {
	case backends.CodeInvalidArgument, backends.CodeDecryptionFailed:
		return status.New(codes.InvalidArgument, msg)
	case backends.CodeNotFound, backends.CodeDisabled, backends.CodePermissionDenied:
		return status.New(codes.FailedPrecondition, msg)
	case backends.CodeThrottled:
		return status.New(codes.ResourceExhausted, msg)
	case backends.CodeUnavailable:
		return status.New(codes.Unavailable, msg)
	case backends.CodeUnsupported:
		return status.New(codes.Unimplemented, msg)
	}
	return status.New(codes.Internal, "internal error")
}
