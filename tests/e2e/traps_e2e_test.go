package e2e

// The newcomer traps of issue 14: each was met by a first-time operator
// with the command shown; each test runs that command and wants the
// answer a newcomer needs.

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/keybroker/keybroker/tests/framework"
)

// stderrBound is how much stderr any refusal may print: enough to say
// what is wrong, never the caller's 10 KB input.
const stderrBound = 1024

// TestTrapRootCreateTwice: creating a root key that exists is invalid
// input (exit 6), not "any other error" (exit 1).
func TestTrapRootCreateTwice(t *testing.T) {
	t.Parallel()
	roots := framework.SoftkmsRoots(t, t.TempDir())
	uri := roots.CreateURI("root-prf")
	framework.WantCode(t, framework.CLI(t, nil, nil, "root", "create", uri, "--algorithm", "hmac-256"), 0)
	r := framework.CLI(t, nil, nil, "root", "create", uri, "--algorithm", "hmac-256")
	framework.WantCode(t, r, exitInvalid)
	if !strings.Contains(r.Stderr, "exists") {
		t.Errorf("stderr %q does not say the key exists", r.Stderr)
	}
}

// TestTrapsAgainstDev runs the traps that need a real cluster against
// `keybroker dev`: its first line, a plain key create, key describe's minimum version, a
// 10 KB key id through an edge and at the central tier, and --addr at an
// ops port.
func TestTrapsAgainstDev(t *testing.T) {
	t.Parallel()
	p := framework.StartDev(t, filepath.Join(t.TempDir(), "kb"), "--port", "0")
	env := p.WaitReady(t)
	stdout, stderr := p.Output()
	nodes := framework.DevNodes(t, stdout)

	// The first line says the slow work has begun.
	if first, _, _ := strings.Cut(stderr, "\n"); !strings.Contains(first, "keybroker dev starting") {
		t.Errorf("keybroker dev's first line is %q, want it to say it is starting", first)
	}

	t.Run("plain key create", func(t *testing.T) {
		r := framework.CLI(t, env, nil, "key", "create", "plain", "--output", "json")
		framework.WantCode(t, r, 0)
		var k keyJSON
		must(t, "decoding key create", json.Unmarshal([]byte(r.Stdout), &k))
		if k.Type != "aes-256-gcm" || k.Mode != "derive" {
			t.Errorf("a plain key create made a %s key in mode %s, want aes-256-gcm, derive", k.Type, k.Mode)
		}
		framework.WantCode(t, framework.CLI(t, env, []byte("x"), "encrypt", "--key", "plain", "--out", filepath.Join(t.TempDir(), "x.enc")), 0)
	})

	t.Run("min decryption version in words", func(t *testing.T) {
		r := framework.CLI(t, env, nil, "key", "describe", framework.DemoKeyID)
		framework.WantCode(t, r, 0)
		if !regexp.MustCompile(`(?m)^Min decryption version: +none \(every version decrypts\)$`).MatchString(r.Stdout) {
			t.Errorf("key describe does not say every version decrypts:\n%s", r.Stdout)
		}
	})

	t.Run("10 KB key id", func(t *testing.T) {
		id := strings.Repeat("k", 10240)
		for _, tt := range []struct {
			name string
			env  map[string]string
			args []string
		}{
			{"describe at the edge", env, []string{"key", "describe", id}},
			{"encrypt at the edge", env, []string{"encrypt", "--key", id}},
			{"create, forwarded to central", env, []string{"key", "create", id}},
			{"rotate at central", framework.WithAddr(env, nodes["central"].GRPC), []string{"key", "rotate", id}},
			{"datakey at central", framework.WithAddr(env, nodes["central"].GRPC), []string{"datakey", "--key", id}},
		} {
			t.Run(tt.name, func(t *testing.T) {
				r := framework.CLI(t, tt.env, []byte("x"), tt.args...)
				framework.WantCode(t, r, exitInvalid)
				if len(r.Stderr) > stderrBound {
					t.Errorf("stderr is %d bytes, want at most %d: %.300q…", len(r.Stderr), stderrBound, r.Stderr)
				}
				for _, want := range []string{`"kkkk`, "… (10240 bytes)", "must be 1-128"} {
					if !strings.Contains(r.Stderr, want) {
						t.Errorf("stderr %.300q does not contain %q", r.Stderr, want)
					}
				}
			})
		}
	})

	t.Run("addr at an ops port", func(t *testing.T) {
		ops := strings.TrimPrefix(nodes["edge-us"].Ops, "https://")
		r := framework.CLI(t, framework.WithAddr(env, ops), nil, "key", "list")
		framework.WantCode(t, r, exitUsage)
		want := fmt.Sprintf("keybroker: key list: %q is not a keybroker gRPC port (it answered without HTTP/2 — is it the ops/metrics port?)\n", ops)
		if !strings.HasPrefix(r.Stderr, want) {
			t.Errorf("stderr %q, want %q", r.Stderr, want)
		}
		// A stream goes through the SDK, not the CLI's own connection: the
		// status text is all there is, and it is put in words too.
		r = framework.CLI(t, framework.WithAddr(env, ops), []byte("x"), "encrypt", "--stream", "--key", framework.DemoKeyID, "--out", filepath.Join(t.TempDir(), "x.enc"))
		framework.WantCode(t, r, exitUsage)
		if !strings.Contains(r.Stderr, "is it the ops/metrics port?") {
			t.Errorf("stderr %q does not ask whether it is the ops port", r.Stderr)
		}
	})
}
