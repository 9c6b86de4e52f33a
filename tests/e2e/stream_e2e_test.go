package e2e

import (
	"bytes"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keybroker/keybroker/envelope"
	"github.com/keybroker/keybroker/tests/framework"
)

// TestStreamsEndToEnd encrypts and decrypts files larger than one message
// through a real keybroker dev: the CLI streams them with the SDK's
// client-side envelope, any node's data key opens them, and a damaged
// stream is refused without leaving a file behind.
func TestStreamsEndToEnd(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	p := framework.StartDev(t, filepath.Join(dir, "kb"), "--port", "0")
	env := p.WaitReady(t)
	stdout, _ := p.Output()
	nodes := framework.DevNodes(t, stdout)

	big := make([]byte, 20<<20+12345)
	_, _ = io.ReadFull(rand.NewChaCha8([32]byte{7}), big)
	plain := writeFile(t, dir, "big.bin", big)
	enc := filepath.Join(dir, "big.enc")
	r := framework.CLI(t, env, nil, "encrypt", "--key", framework.DemoKeyID, "--context", "file=big", "--in", plain, "--out", enc)
	framework.WantCode(t, r, 0)
	if !strings.Contains(r.Stdout, "as a stream") {
		t.Errorf("encrypt of 20 MiB said %q, want it to say it made a stream", r.Stdout)
	}
	ct, err := os.ReadFile(enc)
	must(t, "read the stream", err)
	if !envelope.IsStream(ct) || len(ct) < len(big) {
		t.Fatalf("%s is %d bytes starting %x, want a stream of at least %d bytes", enc, len(ct), ct[:1], len(big))
	}
	for _, name := range []string{"edge-us", "edge-eu", "central"} {
		out := filepath.Join(dir, "big."+name)
		r := framework.CLI(t, framework.WithAddr(env, nodes[name].GRPC), nil, "decrypt", "--context", "file=big", "--in", enc, "--out", out, "--output", "json")
		framework.WantCode(t, r, 0)
		if got, err := os.ReadFile(out); err != nil || !bytes.Equal(got, big) {
			t.Errorf("decrypt at %s: %d bytes, %v; want the 20 MiB back", name, len(got), err)
		}
		if !strings.Contains(r.Stdout, `"stream":true`) {
			t.Errorf("decrypt --output json at %s printed %q", name, r.Stdout)
		}
	}

	// Small input with --stream, through stdin and stdout.
	r = framework.CLI(t, env, []byte("tiny"), "encrypt", "--key", framework.DemoKeyID, "--stream")
	framework.WantCode(t, r, 0)
	if !envelope.IsStream([]byte(r.Stdout)) {
		t.Fatalf("encrypt --stream wrote %x…, not a stream", []byte(r.Stdout)[:1])
	}
	if r := framework.CLI(t, env, []byte(r.Stdout), "decrypt"); r.Code != 0 || r.Stdout != "tiny" {
		t.Errorf("decrypt of a small stream from stdin = %d %q %s", r.Code, r.Stdout, r.Stderr)
	}
	// A stream to a terminal is refused: cmd/keybroker's TestStreamToTerminal.

	// Refusals: exit 6, and no output file or temporary file left.
	cut := writeFile(t, dir, "cut.enc", ct[:len(ct)-envelope.DefaultSegmentSize])
	flipped := bytes.Clone(ct)
	flipped[len(flipped)/2] ^= 1
	bad := writeFile(t, dir, "flipped.enc", flipped)
	for _, tc := range []struct {
		name string
		args []string
		want int
	}{
		{"truncated", []string{"--in", cut, "--context", "file=big"}, exitTruncated},
		{"a flipped byte", []string{"--in", bad, "--context", "file=big"}, exitInvalid},
		{"the wrong context", []string{"--in", enc, "--context", "file=other"}, exitInvalid},
		{"another key", []string{"--in", enc, "--context", "file=big", "--key", "payments"}, exitInvalid},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out := filepath.Join(dir, "refused.out")
			r := framework.CLI(t, env, nil, append([]string{"decrypt", "--out", out}, tc.args...)...)
			framework.WantCode(t, r, tc.want)
			if strings.Contains(r.Stderr, "truncated") != (tc.want == exitTruncated) {
				t.Errorf("stderr %q: says truncated %t, want %t", r.Stderr, !(tc.want == exitTruncated), tc.want == exitTruncated)
			}
			if _, err := os.Stat(out); !os.IsNotExist(err) {
				t.Errorf("a refused stream left %s (%v)", out, err)
			}
			if tmp, _ := filepath.Glob(filepath.Join(dir, ".refused.out.*")); len(tmp) > 0 {
				t.Errorf("a refused stream left temporary files %v", tmp)
			}
		})
	}
}
