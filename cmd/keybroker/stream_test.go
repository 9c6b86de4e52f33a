package main

import (
	"testing"
	"time"
)

func TestProgressLine(t *testing.T) {
	for _, tc := range []struct {
		n, total int64
		elapsed  time.Duration
		want     string
	}{
		{0, 100 << 20, 0, "encrypting [........................]   0%  0 B / 100.0 MiB"},
		{50 << 20, 100 << 20, 2 * time.Second, "encrypting [############............]  50%  50.0 MiB / 100.0 MiB  25.0 MiB/s"},
		{100 << 20, 100 << 20, time.Second, "encrypting [########################] 100%  100.0 MiB / 100.0 MiB  100.0 MiB/s"},
		{3 << 30, -1, time.Second, "encrypting 3.0 GiB  3.0 GiB/s"},
	} {
		if got := progressLine("encrypting", tc.n, tc.total, tc.elapsed); got != tc.want {
			t.Errorf("progressLine(%d, %d, %s) = %q, want %q", tc.n, tc.total, tc.elapsed, got, tc.want)
		}
	}
}

// TestStreamToTerminal: a stream is binary, so encrypt --stream refuses to
// write one to a terminal, as a usage error, before anything is sent. (It
// was a line of TestStreamsEndToEnd, which now runs the built binary, whose
// stdout is never a terminal.)
func TestStreamToTerminal(t *testing.T) {
	b := startBroker(t, brokerConfig{})
	if r := runOnTerminal(t, b.env(), []byte("x"), "encrypt", "--key", "k", "--stream"); r.code != exitUsage {
		t.Errorf("a stream to a terminal: exit %d, want %d (usage)\nstderr: %s", r.code, exitUsage, r.stderr)
	}
	if calls := b.fake.recorded(); len(calls) != 0 {
		t.Errorf("a refused stream sent %d calls, want none", len(calls))
	}
}
