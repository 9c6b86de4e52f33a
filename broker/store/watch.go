package store

import (
	"context"
	"errors"
	"sync"
)

// ErrSlowWatcher ends a watch whose consumer fell too far behind; the
// consumer resumes with Watch from the last revision it handled.
var ErrSlowWatcher = errors.New("store: watcher fell behind")

// Watcher delivers events in revision order on C.
type Watcher struct {
	ch      chan Event
	pending []Event // backlog, delivered before live events

	mu     sync.Mutex
	live   []Event
	wake   chan struct{}
	err    error
	failed bool
}

// C returns the event channel; it is closed when the watch ends.
func (w *Watcher) C() <-chan Event { return w.ch }

// Err says why the channel closed (nil while open, or after ctx ended).
func (w *Watcher) Err() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}

// MaxWatchQueue bounds the events queued for a watcher that does not read:
// past it the watch ends with ErrSlowWatcher.
const MaxWatchQueue = 10_000

// send queues a live event; called with the store's lock held, so it never
// blocks.
func (w *Watcher) send(ev Event) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.failed {
		return
	}
	if len(w.live) >= MaxWatchQueue {
		w.failLocked(ErrSlowWatcher)
		return
	}
	w.live = append(w.live, ev)
	w.signalLocked()
}

func (w *Watcher) fail(err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.failLocked(err)
}

func (w *Watcher) failLocked(err error) {
	if !w.failed {
		w.failed, w.err = true, err
		w.signalLocked()
	}
}

func (w *Watcher) signalLocked() {
	if w.wake != nil {
		close(w.wake)
		w.wake = nil
	}
}

func (w *Watcher) run(ctx context.Context, unregister func()) {
	defer close(w.ch)
	defer unregister()
	queue := w.pending
	w.pending = nil
	var last uint64
	for {
		for len(queue) > 0 {
			ev := queue[0]
			queue = queue[1:]
			if ev.Revision <= last {
				continue
			}
			select {
			case w.ch <- ev:
				last = ev.Revision
			case <-ctx.Done():
				return
			}
		}
		w.mu.Lock()
		if len(w.live) > 0 {
			queue, w.live = w.live, nil
			w.mu.Unlock()
			continue
		}
		if w.failed {
			w.mu.Unlock()
			return
		}
		wake := make(chan struct{})
		w.wake = wake
		w.mu.Unlock()
		select {
		case <-wake:
		case <-ctx.Done():
			return
		}
	}
}
