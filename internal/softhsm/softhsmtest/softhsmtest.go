// Package softhsmtest gives the repository's tests a fresh SoftHSM2 token
// per test. The pkcs11 backend's own tests against a real token
// (conformance, faults, keys, benchmarks) live in backends/pkcs11; identity,
// devcluster, keybrokertest and the process tests use the token too. Users'
// integration tests want package keybrokertest (WithSoftHSM) instead.
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
	"testing"

	"github.com/keybroker/keybroker/internal/softhsm"
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
const ModuleEnv = softhsm.ModuleEnv

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
	p, err := softhsm.Module()
	if err != nil {
		return "", err.Error()
	}
	return p, ""
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
	hsm, err := softhsm.Ensure(tb.Context(), tb.TempDir(), DefaultLabel, softhsm.Options{PIN: DefaultPIN, SOPin: DefaultSOPin})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Setenv(softhsm.ConfEnv, hsm.Conf)
	return &Token{ModulePath: hsm.ModulePath, Label: hsm.Label, PIN: hsm.PIN, SOPin: hsm.SOPin,
		Dir: hsm.Dir, Conf: hsm.Conf, PinFile: hsm.PinFile}
}

// URI returns a pkcs11 URI for the token, with pin-source set to PinFile and
// module-path to ModulePath. object, when not empty, names a key by label.
func (tok *Token) URI(object string) string {
	return (&softhsm.Token{Label: tok.Label, ModulePath: tok.ModulePath, PinFile: tok.PinFile}).URI(object)
}
