package devcluster

import (
	"os"
	"path/filepath"
	"testing"
)

// TestWriteFileNotThroughLinks: a link planted at a configuration file's
// name is replaced, not written through.
func TestWriteFileNotThroughLinks(t *testing.T) {
	dir := t.TempDir()
	victim := filepath.Join(t.TempDir(), "victim")
	if err := os.WriteFile(victim, []byte("precious"), 0o644); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "central.yaml")
	if err := os.Symlink(victim, path); err != nil {
		t.Fatal(err)
	}
	if err := writeFile(path, "node_id: central-1\n"); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(victim); string(got) != "precious" {
		t.Errorf("the link's target now holds %q", got)
	}
	if st, err := os.Lstat(path); err != nil || !st.Mode().IsRegular() || st.Mode().Perm() != 0o600 {
		t.Errorf("%s: %v, %v; want a regular file 0600", path, st, err)
	}
}
