package atomicfile

import (
	"os"
	"path/filepath"
	"testing"
)

func TestWrite(t *testing.T) {
	for _, tc := range []struct {
		name  string
		plant func(t *testing.T, dir, dst, victim string) // a link an attacker leaves
	}{
		{"new file", func(*testing.T, string, string, string) {}},
		{"link at the destination", func(t *testing.T, _, dst, victim string) { symlink(t, victim, dst) }},
		{"link at the old predictable temporary name", func(t *testing.T, _, dst, victim string) { symlink(t, victim, dst+".tmp") }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			dst := filepath.Join(dir, "secret.key")
			victim := filepath.Join(t.TempDir(), "victim")
			if err := os.WriteFile(victim, []byte("precious"), 0o644); err != nil {
				t.Fatal(err)
			}
			tc.plant(t, dir, dst, victim)
			if err := Write(dst, []byte("new secret"), 0o600); err != nil {
				t.Fatalf("Write = %v", err)
			}
			if got, _ := os.ReadFile(victim); string(got) != "precious" {
				t.Errorf("the link's target holds %q: Write followed a planted link", got)
			}
			st, err := os.Lstat(dst)
			if err != nil {
				t.Fatal(err)
			}
			if !st.Mode().IsRegular() || st.Mode().Perm() != 0o600 {
				t.Errorf("destination mode %v, want a regular file 0600", st.Mode())
			}
			if got, _ := os.ReadFile(dst); string(got) != "new secret" {
				t.Errorf("destination holds %q", got)
			}
			ents, _ := os.ReadDir(dir)
			for _, e := range ents {
				if e.Name() != "secret.key" && e.Name() != "secret.key.tmp" {
					t.Errorf("left behind %s", e.Name())
				}
			}
		})
	}
	// The mode asked for is the file's, whatever the umask lets through.
	pub := filepath.Join(t.TempDir(), "ca.crt")
	if err := Write(pub, []byte("cert"), 0o644); err != nil {
		t.Fatal(err)
	}
	if st, _ := os.Stat(pub); st.Mode().Perm() != 0o644 {
		t.Errorf("mode %v, want 0644", st.Mode().Perm())
	}
	// A directory that does not exist is an error, not a panic.
	if err := Write(filepath.Join(t.TempDir(), "no", "such", "f"), nil, 0o600); err == nil {
		t.Error("Write into a missing directory succeeded")
	}
}

func symlink(t *testing.T, target, at string) {
	t.Helper()
	if err := os.Symlink(target, at); err != nil {
		t.Fatal(err)
	}
}
