package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/keybroker/keybroker/tests/framework"
)

// readmeTour returns the shell blocks of the README's tour, in order.
func readmeTour(t *testing.T) []string {
	t.Helper()
	return docShellBlocks(t, filepath.Join("..", "..", "README.md"), "## A five-minute tour")
}

// docShellBlocks returns the ```sh blocks of a Markdown file's section
// under heading (a "## " line), in order, up to the next "## " heading.
func docShellBlocks(t *testing.T, file, heading string) []string {
	t.Helper()
	b, err := os.ReadFile(file)
	must(t, file, err)
	s := string(b)
	start := strings.Index(s, "\n"+heading+"\n")
	if start < 0 {
		t.Fatalf("%s has no %q section", file, heading)
	}
	s = s[start+1:]
	if end := strings.Index(s, "\n## "); end >= 0 {
		s = s[:end]
	}
	var blocks []string
	for _, m := range regexp.MustCompile("(?s)```sh\n(.*?)```").FindAllStringSubmatch(s, -1) {
		blocks = append(blocks, m[1])
	}
	return blocks
}

// TestReadmeTour runs every shell block of the README's tour, in order, in
// one bash with -euo pipefail, against a real keybroker dev started in the
// tour's working directory, with the keybroker binary on PATH; then checks
// the output says what the README says it does, and that the tour left no
// files behind.
func TestReadmeTour(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("bash"); err != nil {
		t.Skip("the README's tour needs bash")
	}
	blocks := readmeTour(t)
	if len(blocks) < 8 {
		t.Fatalf("found %d shell blocks in the README's tour, want at least 8", len(blocks))
	}
	work := t.TempDir()
	p := framework.StartDev(t, filepath.Join(work, "keybroker-dev"), "--port", "0")
	p.WaitReady(t)

	script := "set -euo pipefail\n" + strings.Join(blocks, "\n")
	cmd := exec.CommandContext(t.Context(), "bash", "-c", script)
	cmd.Dir = work
	cmd.Env = append(framework.WithoutKeybrokerVars(framework.ProcessEnv()), "PATH="+filepath.Dir(framework.Binary())+string(os.PathListSeparator)+os.Getenv("PATH"))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("the README's tour failed: %v\n%s", err, out)
	}
	for _, want := range []string{
		"card 4111 1111 1111 1111\n",
		"refused: exit 6\n", // the wrong context
		`"encrypted_data_key":`,
		"round trip ok\n",
		"edge-eu  edge     eu",
		"forwards to central",
		`"primary_version":2`,
		`"key_version":2`,
		`"key_version":1`,
		`"state":"disabled"`,
		"lines verified",
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("the tour's output lacks %q:\n%s", want, out)
		}
	}
	if n := strings.Count(string(out), "refused: exit 6\n"); n != 2 {
		t.Errorf("%d refusals with exit 6, want 2 (wrong context, disabled key):\n%s", n, out)
	}
	// The tour cleans up after itself: followed in a checkout, it leaves
	// nothing beside keybroker-dev.
	entries, err := os.ReadDir(work)
	must(t, "reading the tour's directory", err)
	for _, e := range entries {
		if e.Name() != "keybroker-dev" {
			t.Errorf("the tour left %s in its directory", e.Name())
		}
	}
}

// TestReadmeAWS runs the README's "AWS tools against the dev cluster"
// block against a real keybroker dev with the AWS CLI (each one found,
// as TestAWSCLI does): the env file's endpoint, CA, region and access key
// and its aws function take the CLI to the us edge, and the blob it makes
// opens through keybroker's CLI. No AWS_* variable or configuration of
// the user's leaks in.
func TestReadmeAWS(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("bash"); err != nil {
		t.Skip("the README's AWS block needs bash")
	}
	clis := awsCLIs(t)
	blocks := docShellBlocks(t, filepath.Join("..", "..", "README.md"), "## AWS tools against the dev cluster")
	if len(blocks) != 1 {
		t.Fatalf("found %d shell blocks in the README's AWS section, want 1", len(blocks))
	}
	work := t.TempDir()
	p := framework.StartDev(t, filepath.Join(work, "keybroker-dev"), "--port", "0")
	p.WaitReady(t)
	for version, cli := range clis {
		t.Run(strings.Fields(version)[0], func(t *testing.T) {
			t.Logf("%s: %s", cli, version)
			cmd := exec.CommandContext(t.Context(), "bash", "-c", "set -euo pipefail\n"+blocks[0])
			cmd.Dir = work
			var env []string
			for _, kv := range framework.WithoutKeybrokerVars(framework.ProcessEnv()) {
				if !strings.HasPrefix(kv, "AWS_") && !strings.HasPrefix(kv, "PATH=") {
					env = append(env, kv)
				}
			}
			cmd.Env = append(env,
				"PATH="+filepath.Dir(framework.Binary())+string(os.PathListSeparator)+filepath.Dir(cli)+string(os.PathListSeparator)+os.Getenv("PATH"),
				"AWS_CONFIG_FILE="+filepath.Join(work, "no-config"), "AWS_SHARED_CREDENTIALS_FILE="+filepath.Join(work, "no-credentials"),
				"AWS_EC2_METADATA_DISABLED=true", "AWS_PAGER=")
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("the README's AWS block failed: %v\n%s", err, out)
			}
			if n := strings.Count(string(out), "hello from the AWS CLI\n"); n != 2 {
				t.Errorf("the plaintext came back %d times, want 2 (the AWS CLI, keybroker's CLI):\n%s", n, out)
			}
		})
	}
}
