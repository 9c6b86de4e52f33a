package store

import (
	"errors"
	"path/filepath"
	"testing"
)

func openTest(t *testing.T, history uint64) (*Bolt, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "registry.db")
	s, err := Open(path, history)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, path
}

func TestWatchCompacted(t *testing.T) {
	ctx := t.Context()
	s, _ := openTest(t, 10)
	rev := uint64(0)
	for i := range 30 {
		var err error
		if rev, err = s.Put(ctx, "keys", "k", []byte{byte(i)}, rev); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.Watch(ctx, 2); !errors.Is(err, ErrCompacted) {
		t.Errorf("Watch(2) after compaction: err = %v, want ErrCompacted", err)
	}
	w, err := s.Watch(ctx, 25)
	if err != nil {
		t.Fatalf("Watch(25) = %v", err)
	}
	if ev := <-w.C(); ev.Revision != 26 {
		t.Errorf("first event = %d, want 26", ev.Revision)
	}
	if _, err := s.Watch(ctx, 31); err == nil {
		t.Error("Watch from a future revision succeeded")
	}
}
