package framework

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// binary is the keybroker binary Main built; empty outside Main.
var binary string

// Main builds the keybroker binary once for the test binary — with -race
// when the test binary is race-built — runs the tests, and removes it. A
// package of scenarios calls it from its TestMain:
//
//	func TestMain(m *testing.M) { framework.Main(m) }
func Main(m *testing.M) {
	dir, err := os.MkdirTemp("", "keybroker-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "keybroker")
	args := []string{"build", "-o", binary}
	if raceEnabled {
		args = append(args, "-race")
	}
	// The binary is built in keybroker's own module, with its go.mod, also
	// when the tests are another module's that replaces keybroker with
	// this source (integration/awsesdk): what runs is what ships.
	root, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "github.com/keybroker/keybroker").Output()
	if err != nil {
		fmt.Fprintf(os.Stderr, "finding the keybroker module: %v\n", err)
		os.Exit(1)
	}
	build := exec.Command("go", append(args, "./cmd/keybroker")...)
	build.Dir = strings.TrimSpace(string(root))
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building keybroker: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// Binary is the path of the keybroker binary Main built. It panics when
// the test binary's TestMain does not call Main, which is a mistake in the
// test package, not in a test.
func Binary() string {
	if binary == "" {
		panic("framework: Binary called without framework.Main in TestMain")
	}
	return binary
}

// ProcessEnv is the environment of the processes the tests start: the
// test's own (SOFTHSM2_CONF, for a pkcs11 cluster), with the race
// detector's one-second sleep at exit turned off — it would cost a second
// for every process started. Races are still reported, and fail the exit
// status.
func ProcessEnv() []string {
	race := strings.TrimSpace(os.Getenv("GORACE") + " atexit_sleep_ms=0")
	return append(os.Environ(), "GORACE="+race)
}
