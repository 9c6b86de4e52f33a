package identity

import (
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
)

// Checked is a Source that passes on only the identities check accepts:
// a node's certificate rotated to one of the wrong kind or without a
// usage its role needs (CheckSelf) is logged as an error and the identity
// in force stays, rather than breaking every handshake.
type Checked struct {
	src   Source
	check func(*Material) error
	log   *slog.Logger

	cur     atomic.Pointer[Material]
	changes chan struct{}
	mu      sync.Mutex // serialises updates

	stop chan struct{}
	done chan struct{}
	once sync.Once
}

var _ Source = (*Checked)(nil)

// NewChecked follows src through check. It fails with check's error if
// src's current identity does not pass (and does not close src then).
func NewChecked(src Source, check func(*Material) error, log *slog.Logger) (*Checked, error) {
	m := src.Current()
	if err := check(m); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := &Checked{src: src, check: check, log: log, changes: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
	c.cur.Store(m)
	go c.follow()
	return c, nil
}

// Current is the last identity check accepted.
func (c *Checked) Current() *Material { return c.cur.Load() }

// Changes receives after Current changed.
func (c *Checked) Changes() <-chan struct{} { return c.changes }

// Reload reloads the underlying source (when it can) and takes what it
// now holds, if check accepts it.
func (c *Checked) Reload() error {
	var err error
	if r, ok := c.src.(interface{ Reload() error }); ok {
		err = r.Reload()
	}
	return errors.Join(err, c.update())
}

// Close stops following, and closes the underlying source.
func (c *Checked) Close() error {
	c.once.Do(func() { close(c.stop) })
	<-c.done
	return c.src.Close()
}

func (c *Checked) follow() {
	defer close(c.done)
	for {
		select {
		case <-c.stop:
			return
		case <-c.src.Changes():
			_ = c.update()
		}
	}
}

func (c *Checked) update() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	m := c.src.Current()
	if m == c.cur.Load() {
		return nil
	}
	if err := c.check(m); err != nil {
		c.log.Error("the new certificate cannot serve here; the one in force stays", "id", m.ID.String(), "err", err)
		return err
	}
	c.cur.Store(m)
	select {
	case c.changes <- struct{}{}:
	default:
	}
	return nil
}
