package e2e

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// The CLI's contract as the tests see it from outside the binary: the
// environment variables it reads, its exit codes and its JSON output.
const (
	envAddr         = "KEYBROKER_ADDR"
	envCA           = "KEYBROKER_CA"
	envCert         = "KEYBROKER_CERT"
	envKey          = "KEYBROKER_KEY"
	envSPIFFESocket = "SPIFFE_ENDPOINT_SOCKET"

	exitFailure      = 1
	exitUsage        = 2
	exitNotFound     = 4
	exitUnavailable  = 5
	exitInvalid      = 6
	exitVerifyFailed = 7
	exitTLS          = 8
	exitTruncated    = 9

	// demoKeyID is the key keybroker dev creates.
	demoKeyID = "demo"
	// devEnvFile is the file in keybroker dev's data directory that sets
	// the KEYBROKER_* variables.
	devEnvFile = "env"
)

type result struct {
	code           int
	stdout, stderr string
}

// runCLI runs the built keybroker with env as the only KEYBROKER_*
// variables and stdin as standard input.
func runCLI(t *testing.T, env map[string]string, stdin []byte, args ...string) result {
	t.Helper()
	cmd := exec.CommandContext(t.Context(), keybrokerBin, args...)
	cmd.Env = withoutKeybrokerVars(processEnv())
	cmd.Env = slices.DeleteFunc(cmd.Env, func(kv string) bool { return strings.HasPrefix(kv, envSPIFFESocket+"=") })
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
		return result{0, stdout.String(), stderr.String()}
	case errors.As(err, &exit) && exit.ExitCode() >= 0:
		return result{exit.ExitCode(), stdout.String(), stderr.String()}
	}
	t.Fatalf("keybroker %s: %v\nstderr: %s", strings.Join(args, " "), err, stderr.String())
	return result{}
}

func wantCode(t *testing.T, r result, want int) {
	t.Helper()
	if r.code != want {
		t.Fatalf("exit code %d, want %d\nstdout: %q\nstderr: %s", r.code, want, r.stdout, r.stderr)
	}
}

func writeFile(t *testing.T, dir, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// keyJSON is a key in the CLI's --output json.
type keyJSON struct {
	KeyID                string            `json:"key_id"`
	Type                 string            `json:"type"`
	Mode                 string            `json:"mode"`
	Derived              bool              `json:"derived"`
	State                string            `json:"state"`
	PrimaryVersion       uint32            `json:"primary_version"`
	MinDecryptionVersion uint32            `json:"min_decryption_version"`
	Labels               map[string]string `json:"labels"`
	RootKey              string            `json:"root_key"`
	CreatedAt            *time.Time        `json:"created_at"`
	Revision             uint64            `json:"revision"`
	Placement            string            `json:"placement"`
}

type keyListJSON struct {
	Keys []keyJSON `json:"keys"`
}

// lookupJSON is a node in `keybroker lookup --output json`.
type lookupJSON struct {
	NodeID  string `json:"node_id"`
	Address string `json:"address"`
	Kind    string `json:"kind"`
	Region  string `json:"region,omitempty"`
	Reason  string `json:"reason"`
}

// nodeJSON is a node in `keybroker nodes --output json`.
type nodeJSON struct {
	NodeID          string            `json:"node_id"`
	Kind            string            `json:"kind"`
	Address         string            `json:"address"`
	Region          string            `json:"region,omitempty"`
	Labels          map[string]string `json:"labels,omitempty"`
	Enrolled        bool              `json:"enrolled"`
	Connected       bool              `json:"connected"`
	Prefetch        bool              `json:"prefetch,omitempty"`
	AppliedRevision uint64            `json:"applied_revision,omitempty"`
}
