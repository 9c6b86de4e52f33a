package backends

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// Options carries what every backend may need from its host process.
type Options struct {
	// Logger receives the backend's logs; nil discards them.
	Logger *slog.Logger
	// Metrics registers the backend's metrics; nil registers nothing.
	Metrics prometheus.Registerer
}

// LoggerOrDiscard returns o.Logger, or a logger that discards everything.
func (o Options) LoggerOrDiscard() *slog.Logger {
	if o.Logger != nil {
		return o.Logger
	}
	return slog.New(slog.DiscardHandler)
}

// OpenFunc opens a backend from a URI of its scheme. Key attributes in the
// URI (a key name, an object label) are accepted and ignored: a backend is
// the connection, keys are named per call.
type OpenFunc func(ctx context.Context, uri string, opts Options) (Backend, error)

// Registry maps URI schemes to the functions that open them. It is a value:
// cmd/keybroker wires the default set, tests build their own.
type Registry struct {
	mu    sync.RWMutex
	opens map[string]OpenFunc
}

// NewRegistry returns an empty registry.
func NewRegistry() *Registry {
	return &Registry{opens: make(map[string]OpenFunc)}
}

// Register adds a scheme. Registering a scheme twice is an error.
func (r *Registry) Register(scheme string, open OpenFunc) error {
	if scheme == "" || strings.ContainsAny(scheme, ":/;?") {
		return fmt.Errorf("backends: invalid scheme %q", scheme)
	}
	if open == nil {
		return fmt.Errorf("backends: nil open function for scheme %q", scheme)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, dup := r.opens[scheme]; dup {
		return fmt.Errorf("backends: scheme %q registered twice", scheme)
	}
	r.opens[scheme] = open
	return nil
}

// Schemes lists the registered schemes, sorted.
func (r *Registry) Schemes() []string {
	r.mu.RLock()
	defer r.mu.RUnlock()
	s := make([]string, 0, len(r.opens))
	for k := range r.opens {
		s = append(s, k)
	}
	sort.Strings(s)
	return s
}

// Open opens the backend named by uri. The scheme must match a registered
// one exactly (schemes are not case-folded).
func (r *Registry) Open(ctx context.Context, uri string, opts Options) (Backend, error) {
	scheme, _, ok := strings.Cut(uri, ":")
	if !ok {
		return nil, fmt.Errorf("backends: %q has no scheme: %w", uri, ErrInvalidArgument)
	}
	r.mu.RLock()
	open := r.opens[scheme]
	r.mu.RUnlock()
	if open == nil {
		return nil, fmt.Errorf("backends: unknown scheme %q (registered: %s): %w",
			scheme, strings.Join(r.Schemes(), ", "), ErrInvalidArgument)
	}
	return open(ctx, uri, opts)
}

// RegisterCollector registers c with reg, or returns the collector already
// registered under the same description, so that several backends of one
// kind in a process share their metrics instead of failing to start.
func RegisterCollector[C prometheus.Collector](reg prometheus.Registerer, c C) (C, error) {
	err := reg.Register(c)
	if are, ok := errors.AsType[prometheus.AlreadyRegisteredError](err); ok {
		if existing, ok := are.ExistingCollector.(C); ok {
			return existing, nil
		}
	}
	return c, err
}
