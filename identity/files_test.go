package identity

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestIssueFilesNotThroughLinks: links planted where the certificate and
// key are written — at their names or at the temporary names they were
// once written under — are not followed: the private key never lands in
// another file.
func TestIssueFilesNotThroughLinks(t *testing.T) {
	dir := t.TempDir()
	ca, err := NewCA("kb.test", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(dir, "ca.crt")
	if err := ca.WriteCA(caFile, filepath.Join(dir, "ca.key")); err != nil {
		t.Fatal(err)
	}
	victims := map[string]string{}
	for _, name := range []string{"app.key.tmp", "app.crt.tmp", "app.key"} {
		v := filepath.Join(t.TempDir(), "victim")
		if err := os.WriteFile(v, []byte("precious"), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(v, filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
		victims[name] = v
	}
	f, err := ca.IssueFiles(Identity{TrustDomain: "kb.test", Kind: Client, Name: "app"}, nil, time.Hour, dir, "app", caFile)
	if err != nil {
		t.Fatal(err)
	}
	for name, v := range victims {
		if got, _ := os.ReadFile(v); string(got) != "precious" {
			t.Errorf("the target of the link at %s now holds %q", name, got)
		}
	}
	st, err := os.Lstat(f.Key)
	if err != nil || !st.Mode().IsRegular() || st.Mode().Perm() != 0o600 {
		t.Errorf("key file %v, %v; want a regular file 0600", st, err)
	}
	if _, err := f.ClientConfig(""); err != nil {
		t.Errorf("the issued files do not load: %v", err)
	}
}
