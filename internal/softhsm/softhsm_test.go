package softhsm_test

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keybroker/keybroker/internal/softhsm"
	"github.com/keybroker/keybroker/internal/softhsm/softhsmtest"
)

// TestEnsureMakesThenReuses: the first Ensure initialises a token with
// random PINs in 0600 files; the second reuses it with the same PINs and
// does not initialise another.
func TestEnsureMakesThenReuses(t *testing.T) {
	softhsmtest.Require(t)
	dir := filepath.Join(t.TempDir(), "hsm")
	first, err := softhsm.Ensure(t.Context(), dir, "kbtest", softhsm.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if len(first.PIN) < 8 || first.PIN == first.SOPin {
		t.Errorf("PINs %q, %q: want random, distinct", first.PIN, first.SOPin)
	}
	for _, f := range []string{first.PinFile, filepath.Join(dir, "so.pin"), first.Conf} {
		fi, err := os.Stat(f)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s is %v, want 0600", f, fi.Mode().Perm())
		}
	}
	again, err := softhsm.Ensure(t.Context(), dir, "kbtest", softhsm.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if again.PIN != first.PIN || again.SOPin != first.SOPin {
		t.Errorf("second Ensure PINs %q, %q, want the first's %q, %q", again.PIN, again.SOPin, first.PIN, first.SOPin)
	}
	cmd := exec.CommandContext(t.Context(), "softhsm2-util", "--show-slots")
	cmd.Env = append(os.Environ(), first.Env())
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("softhsm2-util --show-slots: %v\n%s", err, out)
	}
	if n := strings.Count(string(out), "Label:            kbtest"); n != 1 {
		t.Errorf("%d tokens labelled kbtest, want 1:\n%s", n, out)
	}
	if want := "pkcs11:token=kbtest?module-path=" + first.ModulePath + "&pin-source=" + first.PinFile; first.URI("") != want {
		t.Errorf("URI(\"\") = %q, want %q", first.URI(""), want)
	}
}

// TestMissingModuleSaysWhatToInstall: a module that is not there is
// ErrNotInstalled, naming the package to install; nothing is written.
func TestMissingModuleSaysWhatToInstall(t *testing.T) {
	t.Setenv(softhsm.ModuleEnv, filepath.Join(t.TempDir(), "nope.so"))
	dir := filepath.Join(t.TempDir(), "hsm")
	_, err := softhsm.Ensure(t.Context(), dir, "kbtest", softhsm.Options{})
	if !errors.Is(err, softhsm.ErrNotInstalled) || !strings.Contains(err.Error(), "apt-get install softhsm2") {
		t.Errorf("Ensure with a missing module: %v, want ErrNotInstalled naming softhsm2", err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Ensure with a missing module left %s (%v)", dir, err)
	}
}
