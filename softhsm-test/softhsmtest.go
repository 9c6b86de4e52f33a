// Package softhsmtest gives tests a fresh SoftHSM2 token, and holds the
// tests that need one: the backend conformance suite run against the pkcs11
// backend, its fault-injection tests and its benchmarks.
//
// # Use
//
//	tok := softhsmtest.New(t)
//	b, err := pkcs11.Open(ctx, tok.URI(""), backends.Options{})
//
// New creates a temporary token directory and configuration, points
// SOFTHSM2_CONF at it with t.Setenv, and initialises one token labelled
// "keybroker" whose user PIN is in a 0600 file named by [Token.PinFile].
//
// # Process-wide state
//
// SoftHSM reads SOFTHSM2_CONF when the module is initialised (C_Initialize)
// and a PKCS#11 module is initialised once per process. A token made by New
// is therefore only visible to a module initialised after New returns: tests
// must close every backend they open (the pkcs11 backend finalises the
// module when its last user closes) before the next test calls New. Because
// of t.Setenv, tests that call New cannot run in parallel.
//
// # Missing SoftHSM
//
// When softhsm2-util or the module is not installed, New skips the test and
// says what to install — unless KEYBROKER_REQUIRE_SOFTHSM=1 is set (make test
// and CI set it), in which case it fails the test instead.
package softhsmtest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// Default credentials of the tokens New creates. They protect nothing: the
// token lives in a test's temporary directory.
const (
	DefaultLabel = "keybroker"
	DefaultSOPin = "12345678"
	DefaultPIN   = "1234"
)

// RequireEnv is the environment variable that turns a missing SoftHSM from a
// skip into a failure.
const RequireEnv = "KEYBROKER_REQUIRE_SOFTHSM"

// ModuleEnv, when set, names the SoftHSM2 module to use instead of searching
// the standard locations.
const ModuleEnv = "KEYBROKER_SOFTHSM_MODULE"

// modulePaths are where distributions install libsofthsm2.so.
var modulePaths = []string{
	"/usr/lib/softhsm/libsofthsm2.so",
	"/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
	"/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
	"/usr/lib64/pkcs11/libsofthsm2.so",
	"/usr/lib/pkcs11/libsofthsm2.so",
	"/usr/local/lib/softhsm/libsofthsm2.so",
	"/opt/homebrew/lib/softhsm/libsofthsm2.so",
}

const installHint = "apt-get install softhsm2 opensc, or run make test which installs them"

// Token is an initialised SoftHSM2 token in a temporary directory.
type Token struct {
	// ModulePath is the absolute path of libsofthsm2.so.
	ModulePath string
	// Label is the token's label (CKA token label).
	Label string
	// PIN is the user PIN; PinFile holds the same PIN.
	PIN string
	// PinFile is a 0600 file holding the user PIN, for pin-source.
	PinFile string
	// SOPin is the security officer PIN.
	SOPin string
	// Dir is the directory holding the configuration and the token store.
	Dir string
	// Conf is the softhsm2.conf file SOFTHSM2_CONF points at.
	Conf string
}

// Module returns the path of the SoftHSM2 module, or "" and the reason it is
// unusable.
func Module() (string, string) {
	if p := os.Getenv(ModuleEnv); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Sprintf("%s=%s: %v", ModuleEnv, p, err)
		}
		return p, ""
	}
	for _, p := range modulePaths {
		if _, err := os.Stat(p); err == nil {
			return p, ""
		}
	}
	return "", "the SoftHSM2 module libsofthsm2.so is not installed"
}

// Available reports whether SoftHSM2 (the module and softhsm2-util) is
// installed, and if not, why.
func Available() (bool, string) {
	if _, err := exec.LookPath("softhsm2-util"); err != nil {
		return false, "softhsm2-util is not on PATH"
	}
	if _, why := Module(); why != "" {
		return false, why
	}
	return true, ""
}

// Require skips (or, with KEYBROKER_REQUIRE_SOFTHSM=1, fails) tb when
// SoftHSM2 is not installed.
func Require(tb testing.TB) {
	tb.Helper()
	ok, why := Available()
	if ok {
		return
	}
	msg := fmt.Sprintf("SoftHSM2 is required: %s; %s", why, installHint)
	if os.Getenv(RequireEnv) == "1" {
		tb.Fatalf("%s (%s=1 forbids skipping)", msg, RequireEnv)
		return
	}
	tb.Skip(msg)
}

// New initialises a fresh token labelled DefaultLabel in a temporary
// directory and sets SOFTHSM2_CONF for the rest of the test. It cannot be
// used from parallel tests.
func New(tb testing.TB) *Token {
	tb.Helper()
	Require(tb)
	module, _ := Module()
	dir := tb.TempDir()
	tok := &Token{
		ModulePath: module,
		Label:      DefaultLabel,
		PIN:        DefaultPIN,
		SOPin:      DefaultSOPin,
		Dir:        dir,
		Conf:       filepath.Join(dir, "softhsm2.conf"),
		PinFile:    filepath.Join(dir, "user.pin"),
	}
	tokens := filepath.Join(dir, "tokens")
	if err := os.Mkdir(tokens, 0o700); err != nil {
		tb.Fatal(err)
	}
	conf := fmt.Sprintf("directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n", tokens)
	if err := os.WriteFile(tok.Conf, []byte(conf), 0o600); err != nil {
		tb.Fatal(err)
	}
	tb.Setenv("SOFTHSM2_CONF", tok.Conf)
	if err := os.WriteFile(tok.PinFile, []byte(tok.PIN+"\n"), 0o600); err != nil {
		tb.Fatal(err)
	}
	cmd := exec.CommandContext(tb.Context(), "softhsm2-util", "--init-token", "--free",
		"--label", tok.Label, "--so-pin", tok.SOPin, "--pin", tok.PIN)
	cmd.Env = append(os.Environ(), "SOFTHSM2_CONF="+tok.Conf)
	if out, err := cmd.CombinedOutput(); err != nil {
		tb.Fatalf("softhsm2-util --init-token: %v\n%s", err, out)
	}
	return tok
}

// URI returns a pkcs11 URI for the token, with pin-source set to PinFile and
// module-path to ModulePath. object, when not empty, names a key by label.
func (tok *Token) URI(object string) string {
	s := "pkcs11:token=" + escape(tok.Label)
	if object != "" {
		s += ";object=" + escape(object)
	}
	return s + "?module-path=" + escape(tok.ModulePath) + "&pin-source=" + escape(tok.PinFile)
}

// escape percent-encodes a URI attribute value: everything outside RFC 3986
// unreserved characters, '/' and ':' is encoded.
func escape(v string) string {
	var b strings.Builder
	for i := 0; i < len(v); i++ {
		c := v[i]
		if ('a' <= c && c <= 'z') || ('A' <= c && c <= 'Z') || ('0' <= c && c <= '9') || strings.IndexByte("-._~/:", c) >= 0 {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	return b.String()
}
