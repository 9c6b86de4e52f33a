// Package server is the central tier's gRPC face: KeyBroker (package rpc,
// around broker.Service), KeyAdmin, and EdgeSync for the edges —
// Register, Watch, FetchMaterial, Forward and Acknowledge, and for the AWS
// front-ends at edges SigningKey (the signing key of an access key scoped
// to the edge, sealed to it) and ForwardAWS (a signed AWS request the edge
// relays, verified here and run once; awsedge.go).
//
// Edges are enrolled: KeyAdmin.EnrollNode, UpdateNode and RemoveNode (an
// admin's calls) set which edges belong to the cluster and their region and
// labels; EdgeSync refuses every other edge, and Register cannot change
// them. An edge has one Watch stream at a time, each Send bounded by
// Config.SendTimeout; RemoveNode cuts the stream at once (nodes.go,
// liveness.go, watch.go). A stream resumed from an old revision replays
// history but judges placement by the edge's current record, and sends
// material only with a key's current record: a replay releases nothing
// the registry would not release now.
//
// Calls are authenticated, authorized, performed and audited as package
// rpc describes. Errors from a root of trust map here: InvalidArgument
// (a ciphertext or input the backend refuses), FailedPrecondition (a root
// key the backend does not know, has disabled, or will not let us use),
// ResourceExhausted (throttling), Unavailable, Unimplemented.
//
// # Forwarding bound to the caller
//
// An edge forwards to the central tier the calls it cannot serve from its
// cache. The central tier performs such a call only as a principal that
// provably made that very call to that very edge: the client signs a
// ForwardProof (package internal/forwardproof) with its certificate's key —
// the full method, the SHA-256 of the request's deterministic
// serialization, the edge's SPIFFE id, the time and a random nonce — and
// the edge passes on the proof, the client's certificate chain from its TLS
// handshake, and the request bytes as the client sent them. Forward checks,
// in order:
//
//   - the chain verifies against the CA bundle that signs client
//     certificates (Config.ClientCAs), for client authentication, now;
//   - its leaf names a client or admin of this trust domain;
//   - the proof's signature verifies with the leaf's public key;
//   - the claims name the forwarded method and the SHA-256 of the forwarded
//     request bytes;
//   - the audience is the calling edge's own SPIFFE id;
//   - issued_at is within Config.ProofWindow of now, either side;
//   - the nonce has not been seen within the window (replayCache);
//   - the edge's own right: policy.Set.AuthorizeForward, default deny, on
//     every key the request names (both of a ReEncrypt, all of a batch),
//     or on the service when it names none;
//   - then the nonce is recorded, just before the call runs, so a refused
//     forward does not spend it. A replay cache full of live nonces answers
//     Unavailable (retryable), not PermissionDenied.
//
// Then the call runs as the principal the chain proved; the principal the
// edge names (ForwardRequest.principal) is ignored, and edges no longer
// set it. Every refusal is audited with the edge as the actor and the
// reason; a method central does not forward is not echoed, so what an edge
// sends cannot bloat the audit log.
//
// Why the property holds: the edge holds no client key, so it cannot make
// a proof; a proof binds method and request bytes, so it cannot change the
// call; it binds the audience, so one edge cannot spend a proof made for
// another; freshness and the nonce mean it can relay a call at most once,
// within the window. What a compromised edge can still do is relay, once,
// calls clients really sent it, see their answers (as it does for calls it
// serves), or drop them.
//
// Cost: one signature at the client per forwarded call (none for calls an
// edge serves locally: the SDK signs only when LookupKey says the edge
// forwards, for KeyAdmin calls through an edge, or when the edge asks), and
// one signature verification at the central tier, plus one chain
// verification per client certificate chain: verified chains are cached
// (bounded, until the first of their certificates expires).
//
// # Limits
//
// The replay cache is per central node. With several central nodes behind
// one address a proof could be replayed once to each of them within the
// window; the window bounds it. A shared cache is later work.
package server

import (
	"context"
	"crypto/x509"
	"errors"
	"log/slog"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/audit"
	"github.com/keybroker/keybroker/backends"
	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/broker/store"
	"github.com/keybroker/keybroker/internal/wire"
	"github.com/keybroker/keybroker/managed"
	"github.com/keybroker/keybroker/pipeline"
	"github.com/keybroker/keybroker/placement"
	"github.com/keybroker/keybroker/policy"
	"github.com/keybroker/keybroker/rpc"
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
	// Lease is how long an edge's lease lasts past its last heartbeat
	// (0: DefaultEdgeLease).
	Lease time.Duration
	// Heartbeat is how often Watch streams send a heartbeat extending the
	// edge's lease (0: a third of the lease).
	Heartbeat time.Duration
	// ClientCAs are the CAs that sign client and admin certificates — the
	// bundle the TLS listener verifies callers against. Forward verifies
	// the chains edges pass on against it; nil refuses every forward.
	ClientCAs *x509.CertPool
	// Roots, when set, returns the current client CA bundle and takes
	// ClientCAs' place, so forwards follow a reloaded bundle.
	Roots func() *x509.CertPool
	// Revoked, when set, says whether a verified client chain is revoked
	// (identity.Live.Revoked): a revoked client's forwards are refused.
	Revoked func(chain []*x509.Certificate) (reason string, revoked bool)
	// ProofWindow is how far a forward proof's time may be from now,
	// either side (0: DefaultProofWindow).
	ProofWindow time.Duration
	// Now is the clock forward proofs are checked against (nil: time.Now).
	Now func() time.Time
	// SendTimeout bounds one Send on a Watch stream: a stream the edge does
	// not read within it is cut and the edge listed as disconnected (0:
	// DefaultSendTimeout).
	SendTimeout time.Duration
	// Centrals, when set, lists the other live central nodes of the tier
	// (several centrals sharing an etcd store); LookupKey and ListNodes
	// offer them after this one. An error leaves them out of that answer.
	Centrals func(ctx context.Context) ([]Central, error)
	// AccessKeyRevoked, when set, hears each access key revoked here (a
	// front-end drops what it keeps of it at once).
	AccessKeyRevoked func(id string)
	Logger           *slog.Logger
}

// DefaultEdgeLease is how long an edge's lease holds without a heartbeat.
const DefaultEdgeLease = 30 * time.Second

// Server implements the central tier's gRPC services.
type Server struct {
	*rpc.Server
	svc    *broker.Service
	policy *policy.Engine
	audit  *audit.Log
	node   string
	td     string
	addr   string
	// centrals lists the tier's other live central nodes (Config.Centrals).
	centrals func(ctx context.Context) ([]Central, error)
	revoked  func(id string)
	log      *slog.Logger
	lease    time.Duration
	beat     time.Duration
	live     *liveness
	forward  map[string]forwardTarget
	proofs   *proofVerifier
	fronts   awsFronts // the AWS front-ends ForwardAWS relays to
	// sendTimeout bounds one Send on a Watch stream.
	sendTimeout time.Duration
}

// New builds a Server.
func New(c Config) (*Server, error) {
	if c.Service == nil || c.Policy == nil || c.Audit == nil || c.NodeID == "" || c.TrustDomain == "" {
		return nil, errors.New("server: service, policy, audit, node id and trust domain are required")
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Lease <= 0 {
		c.Lease = DefaultEdgeLease
	}
	if c.Heartbeat <= 0 {
		c.Heartbeat = c.Lease / 3
	}
	if c.ProofWindow <= 0 {
		c.ProofWindow = DefaultProofWindow
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.SendTimeout <= 0 {
		c.SendTimeout = DefaultSendTimeout
	}
	s := &Server{svc: c.Service, policy: c.Policy, audit: c.Audit, node: c.NodeID, td: c.TrustDomain,
		addr: c.Address, centrals: c.Centrals, revoked: c.AccessKeyRevoked, log: c.Logger, lease: c.Lease, beat: c.Heartbeat, sendTimeout: c.SendTimeout, live: newLiveness(c.NodeID),
		proofs: &proofVerifier{roots: c.Roots, revoked: c.Revoked, td: c.TrustDomain, window: c.ProofWindow, now: c.Now, seen: newReplayCache(maxNonces)}}
	s.proofs.log = c.Logger
	if cl, ok := c.Service.Registry().Store().(store.Claimer); ok {
		s.proofs.claim = cl
	}
	if s.proofs.roots == nil && c.ClientCAs != nil {
		s.proofs.roots = func() *x509.CertPool { return c.ClientCAs }
	}
	var err error
	s.Server, err = rpc.New(rpc.Config{Performer: performer{Service: c.Service, s: s}, Admin: centralAdmin{c.Service}, Policy: c.Policy, Audit: c.Audit, NodeID: c.NodeID,
		TrustDomain: c.TrustDomain, Classify: classify, Logger: c.Logger})
	if err != nil {
		return nil, err
	}
	s.forward = s.forwardable()
	return s, nil
}

// Central is another live central node of the tier.
type Central struct {
	ID      string
	Address string
}

// Register adds the KeyBroker, KeyAdmin and EdgeSync services to g.
func (s *Server) Register(g *grpc.Server) {
	kbv1.RegisterKeyBrokerServer(g, s.KeyBroker())
	kbv1.RegisterKeyAdminServer(g, &keyAdmin{s: s})
	kbv1.RegisterEdgeSyncServer(g, &edgeSync{s: s})
}

// toStatus maps broker and backend errors to gRPC statuses.
func (s *Server) toStatus(err error) *status.Status { return s.Status(err) }

// classify maps errors from a root of trust, and a store that cannot be
// reached (retryable: at another central now).
func classify(err error) (*status.Status, bool) {
	msg := err.Error()
	if errors.Is(err, store.ErrUnavailable) {
		return status.New(codes.Unavailable, msg), true
	}
	switch backends.CodeOf(err) {
	case backends.CodeInvalidArgument, backends.CodeDecryptionFailed:
		return status.New(codes.InvalidArgument, msg), true
	case backends.CodeNotFound, backends.CodeDisabled, backends.CodePermissionDenied:
		return status.New(codes.FailedPrecondition, msg), true
	case backends.CodeThrottled:
		return status.New(codes.ResourceExhausted, msg), true
	case backends.CodeUnavailable:
		return status.New(codes.Unavailable, msg), true
	case backends.CodeUnsupported:
		return status.New(codes.Unimplemented, msg), true
	}
	return nil, false
}

// performer is the central tier as the pipeline's Performer: every
// operation is performed here, by broker.Service (managed.Ops on the
// resolved key, GenerateRandom, ListKeys, Get), plus what only the server
// knows: the cluster's inventory (LookupKey) and the roots' names
// (Served).
type performer struct {
	*broker.Service
	s *Server
}

var (
	_ pipeline.Performer     = performer{}
	_ pipeline.AliasResolver = performer{}
)

// ResolveAlias answers from the tier's alias records, which decide.
func (p performer) ResolveAlias(ctx context.Context, name string) (string, error) {
	return p.AliasTarget(ctx, name)
}

// LookupKey places op on k over the cluster's inventory.
func (p performer) LookupKey(ctx context.Context, k *managed.Key, op policy.Action, labels map[string]string) ([]placement.Candidate, error) {
	nodes, err := p.s.inventory(ctx)
	if err != nil {
		return nil, err
	}
	return placement.Lookup(placement.Input{Key: k, Op: op, ClientLabels: labels, Nodes: wire.NodesFromProto(nodes), Self: p.s.node,
		Policy: p.s.policy.Current(), TrustDomain: p.s.td}), nil
}

// Served names the root of trust of the key's primary version.
func (p performer) Served(k *managed.Key, _ policy.Action) string {
	if pv := k.PrimaryVersion(); pv != nil {
		if _, name, _, err := p.Roots().Resolve(pv.RootKey); err == nil {
			return name
		}
	}
	return ""
}
