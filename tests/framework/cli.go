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

// The CLI's contract as the tests see it from outside the binary: the
// environment variables it reads, its exit codes and its JSON output.
const (
	EnvAddr         = "KEYBROKER_ADDR"
	EnvCA           = "KEYBROKER_CA"
	EnvCert         = "KEYBROKER_CERT"
	EnvKey          = "KEYBROKER_KEY"
	EnvSPIFFESocket = "SPIFFE_ENDPOINT_SOCKET"
)

type Result struct {
	Code           int
	Stdout, Stderr string
}

// CLI runs the built keybroker with env as the only KEYBROKER_*
// variables and stdin as standard input.
func CLI(t *testing.T, env map[string]string, stdin []byte, args ...string) Result {
	t.Helper()
	cmd := exec.CommandContext(t.Context(), Binary(), args...)
	cmd.Env = WithoutKeybrokerVars(ProcessEnv())
	cmd.Env = slices.DeleteFunc(cmd.Env, func(kv string) bool { return strings.HasPrefix(kv, EnvSPIFFESocket+"=") })
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

func WantCode(t *testing.T, r Result, want int) {
	t.Helper()
	if r.Code != want {
		t.Fatalf("exit code %d, want %d\nstdout: %q\nstderr: %s", r.Code, want, r.Stdout, r.Stderr)
	}
}

func WithoutKeybrokerVars(environ []string) []string {
	var out []string
	for _, kv := range environ {
		if !strings.HasPrefix(kv, "KEYBROKER_") {
			out = append(out, kv)
		}
	}
	return out
}
