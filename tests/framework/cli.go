package framework

import (
	"bytes"
	"errors"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"
)

// The environment variables the CLI reads its connection from.
const (
	EnvAddr         = "KEYBROKER_ADDR"
	EnvCA           = "KEYBROKER_CA"
	EnvCert         = "KEYBROKER_CERT"
	EnvKey          = "KEYBROKER_KEY"
	EnvSPIFFESocket = "KEYBROKER_SPIFFE_SOCKET" // instead of the three files
)

// Result is what a CLI run did.
type Result struct {
	Code           int // the exit status
	Stdout, Stderr string
}

// CLI runs the built keybroker binary with args, stdin as its standard
// input and env as its only KEYBROKER_* variables (the test's own never
// reach it, nor SPIFFE_ENDPOINT_SOCKET), and returns what it did. It
// fails the test only when the binary cannot be run or is killed.
func CLI(t *testing.T, env map[string]string, stdin []byte, args ...string) Result {
	t.Helper()
	cmd := exec.CommandContext(t.Context(), Binary(), args...)
	cmd.Env = slices.DeleteFunc(WithoutKeybrokerVars(ProcessEnv()), func(kv string) bool { return strings.HasPrefix(kv, "SPIFFE_ENDPOINT_SOCKET=") })
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	cmd.Stdin = bytes.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.WaitDelay = 10 * time.Second
	err := cmd.Run()
	var exit *exec.ExitError
	switch {
	case err == nil:
		return Result{0, stdout.String(), stderr.String()}
	case errors.As(err, &exit) && exit.ExitCode() >= 0:
		return Result{exit.ExitCode(), stdout.String(), stderr.String()}
	}
	t.Fatalf("keybroker %s: %v\nstderr: %s", strings.Join(args, " "), err, stderr.String())
	return Result{}
}

// WantCode fails the test, showing the output, unless the run exited
// with want.
func WantCode(t *testing.T, r Result, want int) {
	t.Helper()
	if r.Code != want {
		t.Fatalf("exit code %d, want %d\nstdout: %q\nstderr: %s", r.Code, want, r.Stdout, r.Stderr)
	}
}

// WithoutKeybrokerVars is environ without the KEYBROKER_* variables.
func WithoutKeybrokerVars(environ []string) []string {
	var out []string
	for _, kv := range environ {
		if !strings.HasPrefix(kv, "KEYBROKER_") {
			out = append(out, kv)
		}
	}
	return out
}
