package broker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"regexp"
	"sort"
	"strconv"
	"time"

	"github.com/keybroker/keybroker/broker/store"
	"github.com/keybroker/keybroker/sealed"
)

// KindNodes is the store kind holding the node inventory.
const KindNodes store.Kind = "nodes"

// Node is a registered edge.
type Node struct {
	ID         string            `json:"id"`
	Region     string            `json:"region,omitempty"`
	Labels     map[string]string `json:"labels,omitempty"`
	Address    string            `json:"address"`
	SealingKey []byte            `json:"sealing_key"`
	// Prefetch: the edge takes the material of every key placed on it
	// with Watch, rather than on first use.
	Prefetch   bool      `json:"prefetch,omitempty"`
	Registered time.Time `json:"registered"`
	LastSeen   time.Time `json:"last_seen"`

	Revision uint64 `json:"-"`
}

var (
	nodeIDRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)
	regionRe = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,62}$`)
)

// validate checks a node record.
func (n *Node) validate() error {
	switch {
	case !nodeIDRe.MatchString(n.ID):
		return errorf(ErrInvalidArgument, "node id %q must be 1-128 of [A-Za-z0-9._-]", n.ID)
	case n.Region != "" && !regionRe.MatchString(n.Region):
		return errorf(ErrInvalidArgument, "region %q must be 1-63 of [a-z0-9-]", n.Region)
	}
	host, port, err := net.SplitHostPort(n.Address)
	if p, perr := strconv.ParseUint(port, 10, 16); err != nil || perr != nil || p == 0 || host == "" {
		return errorf(ErrInvalidArgument, "address %q is not a dialable host:port", n.Address)
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		return errorf(ErrInvalidArgument, "address %q is a wildcard, not dialable", n.Address)
	}
	if _, err := sealed.ParsePublicKey(n.SealingKey); err != nil {
		return errorf(ErrInvalidArgument, "sealing key: %v", err)
	}
	return ValidateLabels(n.Labels)
}

// RegisterNode records (or refreshes) an edge in the inventory. The
// registration time of a known node is kept.
func (r *Registry) RegisterNode(ctx context.Context, n *Node) (*Node, error) {
	if err := n.validate(); err != nil {
		return nil, err
	}
	for range maxCASRetries {
		next := *n
		next.LastSeen = r.now().UTC()
		next.Registered = next.LastSeen
		expected := uint64(0)
		o, err := r.st.Get(ctx, KindNodes, n.ID)
		switch {
		case err == nil:
			var prev Node
			if json.Unmarshal(o.Value, &prev) == nil {
				next.Registered = prev.Registered
			}
			expected = o.Revision
		case !errors.Is(err, store.ErrNotFound):
			return nil, err
		}
		data, err := json.Marshal(&next)
		if err != nil {
			return nil, err
		}
		rev, err := r.st.Put(ctx, KindNodes, n.ID, data, expected)
		if errors.Is(err, store.ErrConflict) {
			continue
		}
		if err != nil {
			return nil, err
		}
		next.Revision = rev
		return &next, nil
	}
	return nil, errorf(ErrConflict, "node %q: too many concurrent registrations", n.ID)
}

// Nodes lists the registered edges, sorted by id.
func (r *Registry) Nodes(ctx context.Context) ([]*Node, error) {
	objs, _, err := r.st.List(ctx, KindNodes)
	if err != nil {
		return nil, err
	}
	out := make([]*Node, 0, len(objs))
	for _, o := range objs {
		n, err := decodeNode(o)
		if err != nil {
			return nil, err
		}
		out = append(out, n)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// Node returns one registered edge.
func (r *Registry) Node(ctx context.Context, id string) (*Node, error) {
	o, err := r.st.Get(ctx, KindNodes, id)
	if errors.Is(err, store.ErrNotFound) {
		return nil, errorf(ErrNotFound, "edge %q is not registered", id)
	}
	if err != nil {
		return nil, err
	}
	return decodeNode(o)
}

func decodeNode(o store.Object) (*Node, error) {
	var n Node
	if err := json.Unmarshal(o.Value, &n); err != nil {
		return nil, fmt.Errorf("broker: node %q: corrupt record: %w", o.ID, err)
	}
	n.Revision = o.Revision
	return &n, nil
}
