package server

import (
	"context"
	"sync"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
)

// liveness is what the central node knows of its edges beyond their
// registrations: whether each follows it now (a Watch stream is open), when
// its lease runs out, and the last revision it acknowledged. It lives in
// memory: a restarted central node learns it again as edges reconnect.
type liveness struct {
	mu      sync.Mutex
	edges   map[string]*edgeLive
	changed chan struct{} // closed and replaced when an edge connects or disconnects
}

type edgeLive struct {
	streams int
	lease   time.Time
	applied uint64
}

func newLiveness() *liveness {
	return &liveness{edges: map[string]*edgeLive{}, changed: make(chan struct{})}
}

func (l *liveness) get(id string) *edgeLive {
	e, ok := l.edges[id]
	if !ok {
		e = &edgeLive{}
		l.edges[id] = e
	}
	return e
}

func (l *liveness) broadcastLocked() {
	close(l.changed)
	l.changed = make(chan struct{})
}

// Changed is closed at the next connection or disconnection.
func (l *liveness) Changed() <-chan struct{} {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.changed
}

// connect records an open Watch stream and its first lease.
func (l *liveness) connect(id string, lease time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	e := l.get(id)
	e.streams++
	e.lease = lease
	l.broadcastLocked()
}

// disconnect records a closed stream; the lease stands until it runs out.
func (l *liveness) disconnect(id string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	e := l.get(id)
	e.streams--
	l.broadcastLocked()
}

func (l *liveness) beat(id string, lease time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.get(id).lease = lease
}

func (l *liveness) ack(id string, rev uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if e := l.get(id); rev > e.applied {
		e.applied = rev
	}
}

// describe fills an edge's live fields.
func (l *liveness) describe(n *kbv1.Node) {
	l.mu.Lock()
	defer l.mu.Unlock()
	e, ok := l.edges[n.NodeId]
	if !ok {
		return
	}
	n.Connected = e.streams > 0
	n.AppliedRevision = e.applied
	if !e.lease.IsZero() {
		n.LeaseExpires = timestamppb.New(e.lease)
	}
}

// inventory is this central node followed by the registered edges, with
// what is known of their liveness.
func (s *Server) inventory(ctx context.Context) ([]*kbv1.Node, error) {
	edges, err := s.svc.Registry().Nodes(ctx)
	if err != nil {
		return nil, err
	}
	out := []*kbv1.Node{{NodeId: s.node, Kind: "central", Address: s.addr, LastSeen: timestamppb.Now(), Connected: true}}
	for _, n := range edges {
		kn := &kbv1.Node{NodeId: n.ID, Kind: "edge", Address: n.Address, Region: n.Region, Labels: n.Labels,
			LastSeen: timestamppb.New(n.LastSeen), Revision: n.Revision, Prefetch: n.Prefetch}
		s.live.describe(kn)
		out = append(out, kn)
	}
	return out, nil
}
