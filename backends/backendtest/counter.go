package backendtest

import "sync"

// CallCounter counts the calls a fake receives, by operation, so tests can
// assert how many backend calls were made (and retried). The zero value is
// ready; it is safe for concurrent use. Fakes embed it.
type CallCounter struct {
	mu    sync.Mutex
	calls map[string]int
	total int
}

// Count records one call of op.
func (c *CallCounter) Count(op string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.calls == nil {
		c.calls = map[string]int{}
	}
	c.calls[op]++
	c.total++
}

// Calls reports how many calls op received, faulted ones included.
func (c *CallCounter) Calls(op string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.calls[op]
}

// TotalCalls reports how many calls were received.
func (c *CallCounter) TotalCalls() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.total
}

// ResetCalls zeroes the counters.
func (c *CallCounter) ResetCalls() {
	c.mu.Lock()
	defer c.mu.Unlock()
	clear(c.calls)
	c.total = 0
}
