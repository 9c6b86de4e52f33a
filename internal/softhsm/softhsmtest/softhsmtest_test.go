package softhsmtest

import (
	"fmt"
	"os"
	"strings"
	"testing"
)

// recordTB records what Require does instead of stopping the test.
type recordTB struct {
	testing.TB
	skipped, fatal string
}

func (r *recordTB) Helper()                           {}
func (r *recordTB) Skip(args ...any)                  { r.skipped = strings.TrimSpace(sprint(args...)) }
func (r *recordTB) Fatalf(format string, args ...any) { r.fatal = sprintf(format, args...) }

func TestRequireWithoutSoftHSM(t *testing.T) {
	t.Setenv("PATH", t.TempDir()) // no softhsm2-util
	for _, tc := range []struct {
		require   string
		wantSkip  bool
		wantFatal bool
	}{
		{"", true, false},
		{"0", true, false},
		{"1", false, true},
	} {
		t.Setenv(RequireEnv, tc.require)
		r := &recordTB{TB: t}
		Require(r)
		if (r.skipped != "") != tc.wantSkip || (r.fatal != "") != tc.wantFatal {
			t.Errorf("%s=%q: skipped %q, fatal %q; want skip=%v fatal=%v", RequireEnv, tc.require, r.skipped, r.fatal, tc.wantSkip, tc.wantFatal)
		}
		msg := r.skipped + r.fatal
		if !strings.Contains(msg, "apt-get install softhsm2 opensc, or run make test which installs them") {
			t.Errorf("message %q does not say what to install", msg)
		}
	}
}

func TestModuleEnv(t *testing.T) {
	t.Setenv(ModuleEnv, "/nonexistent/libsofthsm2.so")
	if p, why := Module(); p != "" || !strings.Contains(why, ModuleEnv) {
		t.Errorf("Module() = %q, %q; want no module and a reason naming %s", p, why, ModuleEnv)
	}
}

func TestNew(t *testing.T) {
	tok := New(t)
	if got := os.Getenv("SOFTHSM2_CONF"); got != tok.Conf {
		t.Errorf("SOFTHSM2_CONF = %q, want %q", got, tok.Conf)
	}
	st, err := os.Stat(tok.PinFile)
	if err != nil {
		t.Fatal(err)
	}
	if perm := st.Mode().Perm(); perm != 0o600 {
		t.Errorf("pin file mode = %o, want 600", perm)
	}
	if b, _ := os.ReadFile(tok.PinFile); strings.TrimSpace(string(b)) != tok.PIN {
		t.Errorf("pin file holds %q, want %q", b, tok.PIN)
	}
	want := "pkcs11:token=keybroker;object=root%201?module-path=" + tok.ModulePath + "&pin-source=" + tok.PinFile
	if got := tok.URI("root 1"); got != want {
		t.Errorf("URI(%q) = %q, want %q", "root 1", got, want)
	}
}

func sprint(args ...any) string                 { return fmt.Sprint(args...) }
func sprintf(format string, args ...any) string { return fmt.Sprintf(format, args...) }
