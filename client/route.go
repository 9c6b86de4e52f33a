package client

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	mrand "math/rand/v2"
	"slices"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/identity"
	"github.com/keybroker/keybroker/internal/flight"
	"github.com/keybroker/keybroker/internal/forwardproof"
)

// routeKey names a routing answer: one per key and operation.
type routeKey struct {
	key string
	op  kbv1.Operation
}

type route struct {
	addrs []string
	// forwards names, by address, the edges that forward the operation
	// to the central tier (LOOKUP_REASON_FORWARD_ONLY): calls to them
	// carry a forward proof for that edge.
	forwards map[string]string
	// nodes names, by address, the node the lookup answer put there: the
	// connection to that address accepts only that node's SPIFFE id.
	nodes   map[string]identity.Identity
	expires time.Time
}

// routeCache keeps LookupKey answers for their TTL, and past it as a
// fallback for when no node answers lookups.
type routeCache struct {
	ttl time.Duration
	now func() time.Time

	mu sync.Mutex
	m  map[routeKey]route
	g  singleflight.Group
}

func newRouteCache(ttl time.Duration, now func() time.Time) *routeCache {
	return &routeCache{ttl: ttl, now: now, m: map[routeKey]route{}}
}

// get returns the cached route and whether it is still fresh.
func (r *routeCache) get(k routeKey) (route, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	rt, ok := r.m[k]
	return rt, ok && r.now().Before(rt.expires)
}

func (r *routeCache) put(k routeKey, rt route) {
	r.mu.Lock()
	defer r.mu.Unlock()
	rt.expires = r.now().Add(r.ttl)
	r.m[k] = rt
}

// expire marks a route stale, keeping it as a fallback.
func (r *routeCache) expire(k routeKey) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if rt, ok := r.m[k]; ok {
		rt.expires = time.Time{}
		r.m[k] = rt
	}
}

// Route returns the node addresses the client tries, in order, for op
// with key: the LookupKey answer (cached for Config.LookupTTL), then the
// configured addresses it does not already list.
func (c *Client) Route(ctx context.Context, key string, op kbv1.Operation) ([]string, error) {
	rt, err := c.route(withRequestID(ctx), key, op, false)
	return rt.addrs, err
}

func (c *Client) route(ctx context.Context, key string, op kbv1.Operation, refresh bool) (route, error) {
	if key == "" || c.cfg.Direct {
		return route{addrs: c.cfg.Addrs}, nil
	}
	k := routeKey{key, op}
	cached, fresh := c.routes.get(k)
	if fresh && !refresh {
		return cached, nil
	}
	v, err := flight.Do(ctx, &c.routes.g, key+"\x00"+op.String(), func(ctx context.Context) (any, error) {
		return c.lookup(ctx, key, op)
	})
	if err != nil {
		var e *Error
		switch {
		case errors.As(err, &e) && e.Code == codes.PermissionDenied:
			// The policy does not let this caller look keys up; the
			// configured nodes still serve what it may do.
			c.routes.put(k, route{addrs: c.cfg.Addrs})
			return route{addrs: c.cfg.Addrs}, nil
		case errors.As(err, &e) && (e.Code == codes.Unavailable || e.Code == codes.DeadlineExceeded) && ctx.Err() == nil && cached.addrs != nil:
			return cached, nil // no node answers lookups: the last answer is the best guess
		}
		return route{}, err
	}
	rt := v.(route)
	c.routes.put(k, rt)
	return rt, nil
}

// lookup asks the configured nodes in turn which nodes serve op with key,
// moving on from a node that is unavailable or does not know the key.
func (c *Client) lookup(ctx context.Context, key string, op kbv1.Operation) (route, error) {
	var last *Error
	for _, addr := range c.cfg.Addrs {
		cn, err := c.conn(addr, identity.Identity{})
		if err != nil {
			return route{}, local("LookupKey", key, codes.FailedPrecondition, err)
		}
		cn.calls.Add(1)
		resp, err := cn.kb.LookupKey(ctx, &kbv1.LookupKeyRequest{KeyId: key, Operation: op, ClientLabels: c.labels})
		if err == nil {
			addrs := make([]string, 0, len(resp.GetNodes())+len(c.cfg.Addrs))
			var forwards map[string]string
			nodes := map[string]identity.Identity{}
			for _, n := range resp.GetNodes() {
				if a := n.GetAddress(); a != "" && !slices.Contains(addrs, a) {
					addrs = append(addrs, a)
					if k := identity.Kind(n.GetKind()); c.td != "" && (k == identity.Edge || k == identity.Central) && identity.ValidName(n.GetNodeId()) {
						nodes[a] = identity.Identity{TrustDomain: c.td, Kind: k, Name: n.GetNodeId()}
					}
					if n.GetReason() == kbv1.LookupReason_LOOKUP_REASON_FORWARD_ONLY && n.GetKind() == string(identity.Edge) && c.td != "" && identity.ValidName(n.GetNodeId()) {
						if forwards == nil {
							forwards = map[string]string{}
						}
						forwards[a] = identity.Identity{TrustDomain: c.td, Kind: identity.Edge, Name: n.GetNodeId()}.String()
					}
				}
			}
			for _, a := range c.cfg.Addrs {
				if !slices.Contains(addrs, a) {
					addrs = append(addrs, a)
				}
			}
			return route{addrs: addrs, forwards: forwards, nodes: nodes}, nil
		}
		last = fromRPC("LookupKey", key, addr, err)
		// NotFound from one node may be an edge that has not replicated
		// a new key yet, and so may PermissionDenied (a node authorizes
		// a key it does not know as one with no labels): the next node
		// may know it.
		if !nextNode(ctx, last) && !notHereYet(last) {
			return route{}, last
		}
	}
	return route{}, last
}

// nextNode says whether another node may succeed where this one failed:
// it is down, draining, throttled or stale, and the caller still has time.
func nextNode(ctx context.Context, e *Error) bool {
	if ctx.Err() != nil {
		return false
	}
	switch e.Code {
	case codes.Unavailable, codes.ResourceExhausted, codes.Aborted, codes.DeadlineExceeded:
		return true
	}
	return false
}

// notHereYet says whether a node's answer may only mean that it has not
// replicated the key yet: NotFound, or PermissionDenied, which a node
// answers for a key it does not know when the policy gates keys on their
// labels (existence is not leaked). The next node is asked; the last
// node's answer is final.
func notHereYet(e *Error) bool {
	return e.Code == codes.NotFound || e.Code == codes.PermissionDenied
}

// call runs one operation: over the key's route, node after node while
// they are unavailable, then again after a jittered pause with a fresh
// route, up to Config.MaxAttempts passes and within ctx's deadline. Every
// attempt carries one request id, so the audit lines of all the nodes
// tried can be found together.
func call[T any](ctx context.Context, c *Client, op, key string, lop kbv1.Operation, fn func(context.Context, kbv1.KeyBrokerClient) (T, error)) (T, error) {
	var zero T
	ctx = withRequestID(ctx)
	var last *Error
	attempts := 0
	for pass := range c.cfg.MaxAttempts {
		if pass > 0 && !c.pause(ctx, pass) {
			break
		}
		rt, err := c.route(ctx, key, lop, pass > 0)
		if err != nil {
			e := fromRPC(op, key, "", err)
			if e.Op == "LookupKey" && e.Code != codes.Unavailable {
				// The key's own answer (NotFound, InvalidArgument) is
				// the operation's.
				e = &Error{Op: op, Key: key, Node: e.Node, Code: e.Code, Message: e.Message, Attempts: attempts + 1, cause: e.cause}
				return zero, e
			}
			last = e
			if !nextNode(ctx, e) {
				break
			}
			continue
		}
		for i, addr := range rt.addrs {
			cn, err := c.conn(addr, rt.nodes[addr])
			if err != nil {
				return zero, local(op, key, codes.FailedPrecondition, err)
			}
			attempts++
			cn.calls.Add(1)
			cctx := ctx
			if edge, ok := rt.forwards[addr]; ok {
				cctx = forwardproof.WithAudience(ctx, edge)
			}
			out, err := fn(cctx, cn.kb)
			if err == nil {
				return out, nil
			}
			last = fromRPC(op, key, addr, err)
			last.Attempts = attempts
			switch {
			case nextNode(ctx, last):
				c.routes.expire(routeKey{key, lop})
			case notHereYet(last) && key != "" && i < len(rt.addrs)-1:
				// A node that has not replicated a new key yet (an
				// edge, or a central that has not followed the store's
				// feed that far); a node later in the route has.
			default:
				return zero, last
			}
		}
	}
	return zero, gaveUp(ctx, last, op, key, attempts)
}

// gaveUp is the error of a call that ran out of nodes or time: the last
// node's answer (or "no node to try"), with ctx's own end as its cause.
func gaveUp(ctx context.Context, last *Error, op, key string, attempts int) *Error {
	if last == nil {
		last = local(op, key, codes.Unavailable, errors.New("no node to try"))
	}
	if err := ctx.Err(); err != nil && last.cause == nil {
		last.cause = err
		if errors.Is(err, context.DeadlineExceeded) {
			last.Code = codes.DeadlineExceeded
		}
	}
	last.Attempts = max(last.Attempts, attempts)
	return last
}

// pause sleeps before pass, a jittered doubling interval, and reports
// false when ctx ends first or its deadline leaves no time for the pause.
func (c *Client) pause(ctx context.Context, pass int) bool {
	d := c.cfg.Backoff << min(pass-1, 16)
	d = min(d, c.cfg.MaxBackoff)
	d = d/2 + mrand.N(d/2+1)
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) < d {
		return false
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

type ridKey struct{}

// withRequestID gives ctx a request id sent as x-request-id, unless the
// caller set one (WithRequestID) or ctx has one already.
func withRequestID(ctx context.Context) context.Context {
	if ctx.Value(ridKey{}) != nil {
		return ctx
	}
	if md, ok := metadata.FromOutgoingContext(ctx); ok && len(md.Get("x-request-id")) > 0 {
		return ctx
	}
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	return WithRequestID(ctx, hex.EncodeToString(b))
}

// WithRequestID returns ctx carrying request id rid (1-64 characters of
// [A-Za-z0-9._-]): every node an operation reaches, and the central tier
// behind it, write it in their audit lines.
func WithRequestID(ctx context.Context, rid string) context.Context {
	ctx = context.WithValue(ctx, ridKey{}, rid)
	return metadata.AppendToOutgoingContext(ctx, "x-request-id", rid)
}
