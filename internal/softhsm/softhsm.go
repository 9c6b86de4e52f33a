// Package softhsm finds an installed SoftHSM2 and makes tokens in a
// directory of their own: the one place that knows where distributions put
// libsofthsm2.so, how a token directory and its softhsm2.conf are laid
// out, and how softhsm2-util initialises a token. `keybroker dev
// --softhsm`, package keybrokertest and the tests' token helper
// (package softhsmtest, below this one) use it.
//
// # The directory
//
//	softhsm2.conf   points SoftHSM at tokens/ (rewritten at every Ensure)
//	tokens/         the token store
//	user.pin        the user PIN, for pin-source (0600)
//	so.pin          the security officer PIN (0600)
//
// The PINs are random, made when the token is initialised. They protect
// nothing beyond the directory's own permissions: whoever reads the
// directory reads the token.
//
// # Process-wide state
//
// SoftHSM reads SOFTHSM2_CONF when its module is initialised
// (C_Initialize), once per process while any user keeps it open. A token
// is visible to this process only if SOFTHSM2_CONF names the token's
// Conf before the module is initialised: callers set the variable
// ([Token.Env] gives it), and one process uses one token directory at a
// time.
//
// # Limitations
//
// softhsm2-util takes the PINs as arguments, so they are visible in the
// process list while the token is initialised.
package softhsm

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/keybroker/keybroker/internal/atomicfile"
)

// ModuleEnv, when set, names the SoftHSM2 module to use instead of
// searching the standard locations.
const ModuleEnv = "KEYBROKER_SOFTHSM_MODULE"

// ConfEnv is the variable SoftHSM2 reads its configuration file from.
const ConfEnv = "SOFTHSM2_CONF"

// InstallHint says what to install when SoftHSM2 is missing.
const InstallHint = "install SoftHSM2: apt-get install softhsm2 (Debian, Ubuntu), dnf install softhsm (Fedora), brew install softhsm (macOS); " +
	"or name the module with " + ModuleEnv

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

// ErrNotInstalled is SoftHSM2 (its module or softhsm2-util) missing;
// the error wrapping it says which, and what to install.
var ErrNotInstalled = errors.New("SoftHSM2 is not installed")

// Module returns the absolute path of the SoftHSM2 module: $ModuleEnv
// when set, else the first standard location that exists.
func Module() (string, error) {
	if p := os.Getenv(ModuleEnv); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("%w: %s=%s: %v", ErrNotInstalled, ModuleEnv, p, err)
		}
		return filepath.Abs(p)
	}
	for _, p := range modulePaths {
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("%w: the module libsofthsm2.so is in none of %s", ErrNotInstalled, strings.Join(modulePaths, ", "))
}

// Check reports whether SoftHSM2 — the module and softhsm2-util — is
// installed; the error names what is missing and what to install.
func Check() error {
	if _, err := exec.LookPath("softhsm2-util"); err != nil {
		return fmt.Errorf("%w: softhsm2-util is not on PATH; %s", ErrNotInstalled, InstallHint)
	}
	if _, err := Module(); err != nil {
		return fmt.Errorf("%w; %s", err, InstallHint)
	}
	return nil
}

// Token is a SoftHSM2 token in a directory of its own.
type Token struct {
	// Dir holds the configuration, the token store and the PIN files.
	Dir string
	// Conf is the softhsm2.conf that SOFTHSM2_CONF must name.
	Conf string
	// ModulePath is the absolute path of libsofthsm2.so.
	ModulePath string
	// Label is the token's label.
	Label string
	// PIN is the user PIN; PinFile (0600) holds it, for pin-source.
	PIN, PinFile string
	// SOPin is the security officer PIN.
	SOPin string
}

// Options are the PINs Ensure initialises a new token with; empty ones
// are random.
type Options struct {
	PIN, SOPin string
}

// Ensure makes dir (0700) a token directory holding one token labelled
// label, initialising it unless an earlier Ensure did: a token store
// with anything in it is reused with the PINs in its PIN files. The
// configuration is rewritten every time, so a directory that moved still
// works. It fails with ErrNotInstalled when SoftHSM2 is missing.
func Ensure(ctx context.Context, dir, label string, opts Options) (*Token, error) {
	if err := Check(); err != nil {
		return nil, err
	}
	if label == "" {
		return nil, errors.New("softhsm: no token label")
	}
	module, _ := Module()
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	if !ConfSafe(dir) {
		return nil, fmt.Errorf("softhsm: %q cannot hold a token: softhsm2.conf would cut its path at the '#' or line break in it; use another directory", dir)
	}
	tok := &Token{Dir: dir, Conf: filepath.Join(dir, "softhsm2.conf"), ModulePath: module, Label: label,
		PinFile: filepath.Join(dir, "user.pin")}
	tokens := filepath.Join(dir, "tokens")
	if err := os.MkdirAll(tokens, 0o700); err != nil {
		return nil, fmt.Errorf("softhsm: %w", err)
	}
	conf := fmt.Sprintf("# Written by keybroker.\ndirectories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n", tokens)
	if err := atomicfile.Write(tok.Conf, []byte(conf), 0o600); err != nil {
		return nil, fmt.Errorf("softhsm: %w", err)
	}
	soFile := filepath.Join(dir, "so.pin")
	entries, err := os.ReadDir(tokens)
	if err != nil {
		return nil, fmt.Errorf("softhsm: %w", err)
	}
	if len(entries) > 0 {
		if tok.PIN, err = readPIN(tok.PinFile); err == nil {
			tok.SOPin, err = readPIN(soFile)
		}
		if err != nil {
			return nil, fmt.Errorf("softhsm: %s holds a token store but its PIN files cannot be read (%w): remove the directory to start afresh", dir, err)
		}
		return tok, nil
	}
	tok.PIN, tok.SOPin = opts.PIN, opts.SOPin
	for _, p := range []*string{&tok.PIN, &tok.SOPin} {
		if *p == "" {
			raw := make([]byte, 8)
			if _, err := rand.Read(raw); err != nil {
				return nil, err
			}
			*p = hex.EncodeToString(raw)
		}
	}
	// The PIN files first: a token without them could not be reused.
	if err := atomicfile.Write(tok.PinFile, []byte(tok.PIN+"\n"), 0o600); err != nil {
		return nil, fmt.Errorf("softhsm: %w", err)
	}
	if err := atomicfile.Write(soFile, []byte(tok.SOPin+"\n"), 0o600); err != nil {
		return nil, fmt.Errorf("softhsm: %w", err)
	}
	cmd := exec.CommandContext(ctx, "softhsm2-util", "--init-token", "--free", "--label", label, "--so-pin", tok.SOPin, "--pin", tok.PIN)
	cmd.Env = append(os.Environ(), tok.Env())
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("softhsm: softhsm2-util --init-token: %w: %s", err, strings.TrimSpace(string(out)))
	}
	return tok, nil
}

// ConfSafe reports whether softhsm2.conf can name dir's token store: its
// parser ends a value at '#' (a comment) and at a line break.
func ConfSafe(dir string) bool { return !strings.ContainsAny(dir, "#\r\n") }

func readPIN(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	pin := strings.TrimSpace(string(b))
	if pin == "" {
		return "", fmt.Errorf("%s is empty", path)
	}
	return pin, nil
}

// Env is the SOFTHSM2_CONF=... environment entry naming the token's
// configuration.
func (tok *Token) Env() string { return ConfEnv + "=" + tok.Conf }

// URI returns a pkcs11 URI for the token, with pin-source PinFile and
// module-path ModulePath; object, when not empty, names a key by label.
// Without an object it is a backend URI.
func (tok *Token) URI(object string) string {
	s := "pkcs11:token=" + Escape(tok.Label)
	if object != "" {
		s += ";object=" + Escape(object)
	}
	return s + "?module-path=" + Escape(tok.ModulePath) + "&pin-source=" + Escape(tok.PinFile)
}

// Escape percent-encodes a URI attribute value: everything outside RFC
// 3986 unreserved characters, '/' and ':' is encoded.
func Escape(v string) string {
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
