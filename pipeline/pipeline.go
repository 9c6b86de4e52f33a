// Package pipeline is the one path every key operation takes, whatever
// front-end received it: the KeyBroker gRPC API (package rpc) today, an
// AWS-KMS-compatible API, an XKS proxy or a Kubernetes KMS plugin
// tomorrow. A front-end authenticates its caller its own way, names it in
// a Caller, converts its request to an input struct, and calls the
// Pipeline method of the operation; it converts the result struct (or the
// error) back. The package imports neither gRPC nor the wire types.
//
// # A request's path
//
// Each operation does, once and in this order:
//
//  1. begin the audit record (Caller: principal, request ids, forwarding
//     edge) and a trace of the backend calls it makes (audit.WithTrace);
//  2. check the key id, or parse the ciphertext header (once:
//     managed.ParseCiphertext; the header, not the bytes, goes on);
//  3. resolve the key (Performer.Get, once) and authorize the caller on
//     it with the policy in force, through the decision cache. An unknown
//     key is authorized as a key with no labels, so a caller the policy
//     would not let near it learns PermissionDenied, not NotFound;
//  4. check the key is usable for the operation (managed.CheckUsable: its
//     state and type; Key.CheckDecryptVersion: the version named) —
//     unless the performer forwards the operation (Forwarder), when the
//     node that performs it checks with its own, fresher view;
//  5. perform the operation with the very *managed.Key it authorized
//     (Performer: the central tier's broker.Service, an edge's cache);
//  6. end: the audit line is written before the result is returned. If
//     it cannot be written the call fails with ErrAuditDown, whatever it
//     did: there are no unaudited operations.
//
// ReEncrypt is two such operations, both authorized as ReEncrypt, each
// with its own audit line under the one request id. GenerateRandom and
// ListKeys are authorized on the service; ListKeys answers only the keys
// the caller may DescribeKey (through the decision cache), in pages whose
// next token is a key the caller was shown.
//
// The admin operations (CreateKey, RotateKey, UpdateKey, DisableKey,
// EnableKey, ScheduleKeyDeletion, CancelKeyDeletion) take the same path,
// performed by the node's Admin (the central tier's; an edge has none and
// answers ErrNoAdmin): CreateKey authorizes the key as it would be created
// (its labels and the root key it would use), UpdateKey the key as it is
// and as it will be, inside the compare-and-swap that writes it.
//
// Calls that are not key operations (node and access-key administration,
// edge sync) use the same audited Call: Begin, Decide, End.
//
// # Errors
//
// The pipeline's own refusals are managed errors (managed.Error):
// PermissionDenied, InvalidArgument (a malformed key id or ciphertext),
// NotFound (a key the caller may know does not exist). Config.Outcome
// names an error for the audit line, so the line and the front-end's
// answer agree; the front-end maps errors to its own codes.
package pipeline

import (
	"context"
	"errors"
	"log/slog"

	"github.com/keybroker/keybroker/audit"
	"github.com/keybroker/keybroker/identity"
	"github.com/keybroker/keybroker/managed"
	"github.com/keybroker/keybroker/placement"
	"github.com/keybroker/keybroker/policy"
)

// Caller is who makes a call and under which request ids, as the
// front-end established them its own way.
type Caller struct {
	// Who is the authenticated principal.
	Who identity.Identity
	// RequestID is the call's request id (the audit's); ClientRequestID
	// the caller's own correlation id, if it sent one.
	RequestID, ClientRequestID string
	// Via is the edge that forwarded the call on Who's behalf, if any.
	Via string
}

// Principal is the caller as Cedar sees it.
func (c Caller) Principal() policy.Principal {
	return policy.Principal{Kind: policy.Kind(c.Who.Kind), Name: c.Who.Name, TrustDomain: c.Who.TrustDomain}
}

// Admin reports whether the caller is an admin: only admins are told root
// key URIs and a root of trust's own error text.
func (c Caller) Admin() bool { return c.Who.Kind == identity.Admin }

// Performer performs the operations at one node, on the keys the pipeline
// resolved (Get) and checked. Its errors are managed errors or errors the
// front-end knows (a root of trust's, a forwarded call's).
type Performer interface {
	// Get resolves a key id; an unknown key is a managed.ErrNotFound.
	Get(ctx context.Context, id string) (*managed.Key, error)
	// The operations on a key the pipeline resolved and checked.
	managed.KeyOperations
	GenerateRandom(ctx context.Context, n int) ([]byte, error)
	// ListKeys pages through the keys the selector matches and visible
	// keeps (managed.Page).
	ListKeys(ctx context.Context, selector map[string]string, pageSize int, token string, visible func(*managed.Key) bool) ([]*managed.Key, string, error)
	// LookupKey lists the nodes able to perform op with k now, best first
	// (placement.Lookup).
	LookupKey(ctx context.Context, k *managed.Key, op policy.Action, clientLabels map[string]string) ([]placement.Candidate, error)
	// Served names what performs op on k, for the audit line: a root of
	// trust at the central tier; the cache or the central tier at an edge.
	Served(k *managed.Key, op policy.Action) string
}

// Forwarder is what a Performer that forwards some operations elsewhere
// implements (an edge, to the central tier): Forwards says whether op on
// version v of k (0: the primary) is forwarded. The pipeline leaves the
// usability checks of a forwarded operation to the node that performs it,
// whose view of the key is the authoritative one.
type Forwarder interface {
	Forwards(k *managed.Key, op managed.Operation, v uint32) bool
}

// Policies gives the policy set in force.
type Policies interface {
	Current() *policy.Set
}

// Config assembles a Pipeline.
type Config struct {
	Performer Performer
	// Admin performs the admin operations (CreateKey, UpdateKey, …): the
	// central tier's keys; nil at an edge, whose pipeline answers them
	// ErrNoAdmin.
	Admin  Admin
	Policy Policies
	Audit  *audit.Log
	// NodeID names this node in audit lines.
	NodeID string
	// Outcome names a failed call's outcome and detail for its audit line
	// (the front-end's code and the message it answers with), so the line
	// says what the caller was told. Nil: "error" and the error's text.
	Outcome func(error) (outcome, detail string)
	Logger  *slog.Logger
}

// Pipeline runs operations for a node's front-ends. It is safe for
// concurrent use.
type Pipeline struct {
	perf    Performer
	fwd     Forwarder // nil: every operation is performed here
	admin   Admin     // nil: no admin operations here
	policy  Policies
	audit   *audit.Log
	node    string
	outcome func(error) (string, string)
	log     *slog.Logger
	// decisions remembers policy decisions on keys.
	decisions decisionCache
}

// New builds a Pipeline.
func New(c Config) (*Pipeline, error) {
	if c.Performer == nil || c.Policy == nil || c.Audit == nil || c.NodeID == "" {
		return nil, errors.New("pipeline: performer, policy, audit and node id are required")
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Outcome == nil {
		c.Outcome = func(err error) (string, string) { return "error", err.Error() }
	}
	fwd, _ := c.Performer.(Forwarder)
	return &Pipeline{perf: c.Performer, fwd: fwd, admin: c.Admin, policy: c.Policy, audit: c.Audit, node: c.NodeID, outcome: c.Outcome, log: c.Logger}, nil
}

// Policy is the policy source the pipeline authorizes with.
func (p *Pipeline) Policy() Policies { return p.policy }

// KeyDecisionsMade counts the policy decisions on keys this pipeline has
// evaluated because its decision cache did not hold them.
func (p *Pipeline) KeyDecisionsMade() uint64 { return p.decisions.made.Load() }
