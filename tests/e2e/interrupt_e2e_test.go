package e2e

// The process tests of interruption: a real `keybroker encrypt` or
// `decrypt` reading from a pipe (or a FIFO) the test holds open, sent
// SIGINT or SIGTERM once it has read several MiB, against a real
// `keybroker dev`.

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/keybroker/keybroker/envelope"
	"github.com/keybroker/keybroker/tests/framework"
)

// cliProc is a keybroker client command running as a process, its stdin a
// pipe the test writes, its stdout and stderr collected.
type cliProc struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser

	mu             sync.Mutex
	stdout, stderr bytes.Buffer

	exited chan struct{}
}

type lockedWriter struct {
	mu  *sync.Mutex
	buf *bytes.Buffer
}

func (w lockedWriter) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.Write(b)
}

// startCLIProc runs keybroker args with env's KEYBROKER_* variables.
func startCLIProc(t *testing.T, env map[string]string, args ...string) *cliProc {
	t.Helper()
	p := &cliProc{exited: make(chan struct{})}
	p.cmd = exec.Command(framework.Binary(), args...)
	p.cmd.Env = framework.WithoutKeybrokerVars(framework.ProcessEnv())
	for k, v := range env {
		p.cmd.Env = append(p.cmd.Env, k+"="+v)
	}
	p.cmd.Dir = t.TempDir()
	p.cmd.Stdout = lockedWriter{&p.mu, &p.stdout}
	p.cmd.Stderr = lockedWriter{&p.mu, &p.stderr}
	var err error
	if p.stdin, err = p.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		_ = p.cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		<-p.exited
	})
	return p
}

func (p *cliProc) output() (stdout []byte, stderr string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return bytes.Clone(p.stdout.Bytes()), p.stderr.String()
}

// feed writes data to w in 64 KiB writes. A pipe holds 64 KiB, so once
// feed returns the reader has taken all but that much: the event the test
// waits for instead of a time.
func feed(t *testing.T, p *cliProc, w io.Writer, data []byte) {
	t.Helper()
	for len(data) > 0 {
		n := min(len(data), 64<<10)
		if _, err := w.Write(data[:n]); err != nil {
			_, stderr := p.output()
			t.Fatalf("feeding the process: %v\nstderr:\n%s", err, stderr)
		}
		data = data[n:]
	}
}

// signalAndWait sends sig and waits for the exit (bounded only so that a
// hang fails the test instead of the suite).
func (p *cliProc) signalAndWait(t *testing.T, sig syscall.Signal) int {
	t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.exited:
	case <-time.After(framework.DevStopTimeout):
		_, stderr := p.output()
		t.Fatalf("still running %s after %v\nstderr:\n%s", framework.DevStopTimeout, sig, stderr)
	}
	return p.cmd.ProcessState.ExitCode()
}

// TestInterruptStreams interrupts stream encryption and decryption midway —
// input on a pipe held open, so that only the signal can end it — and wants
// exit 130 for SIGINT and 143 for SIGTERM, a message saying so, no --out
// file and no temporary file left; on stdout, a ciphertext that decrypt
// calls truncated, never complete.
func TestInterruptStreams(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	p := framework.StartDev(t, filepath.Join(dir, "kb"), "--port", "0")
	env := p.WaitReady(t)

	// More than one message (4 MiB), so every encrypt streams.
	const fed = 6 << 20
	plain := make([]byte, 12<<20)
	_, _ = io.ReadFull(rand.NewChaCha8([32]byte{14}), plain)
	plainFile := writeFile(t, dir, "plain.bin", plain)
	ctFile := filepath.Join(dir, "plain.enc")
	framework.WantCode(t, framework.CLI(t, env, nil, "encrypt", "--key", framework.DemoKeyID, "--in", plainFile, "--out", ctFile), 0)
	ct, err := os.ReadFile(ctFile)
	must(t, "read the stream", err)

	for _, tc := range []struct {
		name string
		args []string // --out OUT is added
		in   []byte   // fed on stdin
		sig  syscall.Signal
		want int
	}{
		{"encrypt --stream, SIGINT", []string{"encrypt", "--key", framework.DemoKeyID, "--stream"}, plain, syscall.SIGINT, 130},
		{"encrypt --stream, SIGTERM", []string{"encrypt", "--key", framework.DemoKeyID, "--stream"}, plain, syscall.SIGTERM, 143},
		{"encrypt of large input, SIGINT", []string{"encrypt", "--key", framework.DemoKeyID}, plain, syscall.SIGINT, 130},
		{"decrypt, SIGINT", []string{"decrypt"}, ct, syscall.SIGINT, 130},
		{"decrypt, SIGTERM", []string{"decrypt"}, ct, syscall.SIGTERM, 143},
	} {
		t.Run(tc.name+" to --out", func(t *testing.T) {
			outDir := t.TempDir()
			out := filepath.Join(outDir, "result")
			c := startCLIProc(t, env, append(tc.args, "--out", out)...)
			feed(t, c, c.stdin, tc.in[:fed])
			// The stream is under way, into a temporary file.
			if tmp, _ := filepath.Glob(filepath.Join(outDir, ".result.*.tmp")); len(tmp) != 1 {
				t.Errorf("mid-stream, temporary files %v, want one", tmp)
			}
			code := c.signalAndWait(t, tc.sig)
			wantInterrupted(t, c, code, tc.want, "no output written")
			if _, err := os.Stat(out); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("an interrupted stream left %s (%v)", out, err)
			}
			if left, _ := os.ReadDir(outDir); len(left) > 0 {
				t.Errorf("an interrupted stream left %v in the output directory", left[0].Name())
			}
		})
	}

	// Non-stream encrypt naming its input: a FIFO the test writes, so
	// that the input, like a large file being read, is not done when the
	// signal comes.
	t.Run("encrypt --in FIFO, SIGINT", func(t *testing.T) {
		outDir := t.TempDir()
		fifo := filepath.Join(t.TempDir(), "input")
		must(t, "mkfifo", syscall.Mkfifo(fifo, 0o600))
		out := filepath.Join(outDir, "result.enc")
		c := startCLIProc(t, env, "encrypt", "--key", framework.DemoKeyID, "--in", fifo, "--out", out)
		f, err := os.OpenFile(fifo, os.O_WRONLY, 0) // waits for keybroker to open it
		must(t, "open the FIFO", err)
		defer f.Close()
		feed(t, c, f, plain[:fed])
		wantInterrupted(t, c, c.signalAndWait(t, syscall.SIGINT), 130, "no output written")
		if left, _ := os.ReadDir(outDir); len(left) > 0 {
			t.Errorf("an interrupted encrypt left %v", left[0].Name())
		}
	})

	// Blocked before it streams: reading the first 4 MiB, which decide
	// whether it streams at all.
	t.Run("encrypt reading its input, SIGTERM", func(t *testing.T) {
		outDir := t.TempDir()
		c := startCLIProc(t, env, "encrypt", "--key", framework.DemoKeyID, "--out", filepath.Join(outDir, "r"))
		feed(t, c, c.stdin, plain[:1<<20])
		wantInterrupted(t, c, c.signalAndWait(t, syscall.SIGTERM), 143, "no output written")
		if left, _ := os.ReadDir(outDir); len(left) > 0 {
			t.Errorf("an interrupted encrypt left %v", left[0].Name())
		}
	})

	// To stdout the output stops without its final segment: decrypt
	// refuses it as truncated (exit 9), whatever was written.
	t.Run("encrypt --stream to stdout, SIGINT", func(t *testing.T) {
		c := startCLIProc(t, env, "encrypt", "--key", framework.DemoKeyID, "--stream")
		feed(t, c, c.stdin, plain[:fed])
		wantInterrupted(t, c, c.signalAndWait(t, syscall.SIGINT), 130, "without its final segment")
		partial, _ := c.output()
		if !envelope.IsStream(partial) || len(partial) < 4<<20 {
			t.Fatalf("stdout has %d bytes, want a stream of at least the 4 MiB read before streaming", len(partial))
		}
		r := framework.CLI(t, env, partial, "decrypt")
		framework.WantCode(t, r, exitTruncated)
		if !strings.Contains(r.Stderr, "truncated") {
			t.Errorf("decrypt of the interrupted stream said %q, want it to say truncated", r.Stderr)
		}
		if !bytes.HasPrefix(plain, []byte(r.Stdout)) {
			t.Errorf("decrypt wrote %d bytes that are not a prefix of the plaintext", len(r.Stdout))
		}
	})
	t.Run("decrypt to stdout, SIGTERM", func(t *testing.T) {
		c := startCLIProc(t, env, "decrypt")
		feed(t, c, c.stdin, ct[:fed])
		wantInterrupted(t, c, c.signalAndWait(t, syscall.SIGTERM), 143, "incomplete")
		if got, _ := c.output(); !bytes.HasPrefix(plain, got) {
			t.Errorf("decrypt wrote %d bytes that are not a prefix of the plaintext", len(got))
		}
	})
}

// TestInterruptTwice: a command stuck where cancellation cannot reach it —
// writing a stream to a pipe nobody reads — outlives the first SIGINT, and
// a second one kills it at once.
func TestInterruptTwice(t *testing.T) {
	t.Parallel()
	p := framework.StartDev(t, filepath.Join(t.TempDir(), "kb"), "--port", "0")
	env := p.WaitReady(t)
	pr, pw, err := os.Pipe()
	must(t, "pipe", err)
	defer pr.Close()
	c := &cliProc{exited: make(chan struct{})}
	c.cmd = exec.Command(framework.Binary(), "encrypt", "--key", framework.DemoKeyID, "--stream")
	c.cmd.Env = framework.WithoutKeybrokerVars(framework.ProcessEnv())
	for k, v := range env {
		c.cmd.Env = append(c.cmd.Env, k+"="+v)
	}
	c.cmd.Stdout = pw
	c.cmd.Stderr = lockedWriter{&c.mu, &c.stderr}
	stdin, err := c.cmd.StdinPipe()
	must(t, "stdin", err)
	must(t, "start", c.cmd.Start())
	pw.Close()
	go func() {
		_ = c.cmd.Wait()
		close(c.exited)
	}()
	t.Cleanup(func() {
		_ = c.cmd.Process.Kill()
		<-c.exited
	})
	// Feed it endlessly; the feed blocks once the process does.
	go func() {
		chunk := make([]byte, 64<<10)
		for {
			if _, err := stdin.Write(chunk); err != nil {
				return
			}
		}
	}()
	// The event: segment data in stdout's pipe. A segment (64 KiB + 16
	// bytes) is larger than the pipe, so the process is then inside the
	// write of segment 0, which can never finish. (The pipe never reads
	// as quite full: its pages are partly taken by the header.)
	capacity, err := unix.FcntlInt(pr.Fd(), unix.F_GETPIPE_SZ, 0)
	must(t, "F_GETPIPE_SZ", err)
	for {
		n, err := unix.IoctlGetInt(int(pr.Fd()), unix.TIOCINQ) // FIONREAD
		must(t, "TIOCINQ", err)
		if n >= capacity/2 {
			break
		}
		select {
		case <-c.exited:
			_, stderr := c.output()
			t.Fatalf("exited before filling stdout:\n%s", stderr)
		case <-time.After(10 * time.Millisecond):
		}
	}
	// SIGINT until it dies: the first is handled (it cannot act on it,
	// blocked in the write) and the handler removed; a later one kills.
	// Repeating is only for the instant between the handler receiving the
	// first and removing itself.
	deadline := time.After(framework.DevStopTimeout)
	for dead := false; !dead; {
		must(t, "SIGINT", c.cmd.Process.Signal(syscall.SIGINT))
		select {
		case <-c.exited:
			dead = true
		case <-time.After(100 * time.Millisecond):
		case <-deadline:
			t.Fatalf("still running %s after repeated SIGINTs", framework.DevStopTimeout)
		}
	}
	ws, _ := c.cmd.ProcessState.Sys().(syscall.WaitStatus)
	if !ws.Signaled() || ws.Signal() != syscall.SIGINT {
		_, stderr := c.output()
		t.Errorf("exit status %v, want killed by SIGINT\nstderr:\n%s", c.cmd.ProcessState, stderr)
	}
}

func wantInterrupted(t *testing.T, c *cliProc, code, want int, msg string) {
	t.Helper()
	_, stderr := c.output()
	if code != want {
		t.Errorf("exit %d, want %d\nstderr:\n%s", code, want, stderr)
	}
	if !strings.Contains(stderr, "interrupted by SIG") || !strings.Contains(stderr, msg) {
		t.Errorf("stderr %q, want it to say interrupted and %q", stderr, msg)
	}
}
