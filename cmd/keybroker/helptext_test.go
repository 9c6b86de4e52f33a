package main

import (
	"io"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

// TestHelpMentionsOnlyRealFlags reads every command's Use, Long and
// Example text for --flag mentions and checks each flag exists on the
// command it belongs to, so help never sends a reader to a flag that is not
// there (random --help once offered --in). A line that runs `keybroker
// CMD …` is checked against CMD; another line against the command whose
// help it is; lines that run other tools are skipped.
func TestHelpMentionsOnlyRealFlags(t *testing.T) {
	t.Parallel()
	flagRe := regexp.MustCompile(`(?:^|[^-\w])--([a-z][a-z0-9-]*)`)
	invokeRe := regexp.MustCompile(`\bkeybroker((?:\s+[a-z][a-z0-9-]*)+)`)
	foreign := []string{"softhsm2-util", "curl ", "openssl", "pkcs11-tool", "go build", "go run"}
	// Prose that names another command's flag on purpose.
	allowed := map[string]bool{
		"keybroker decrypt --stream": true, // "a stream (from encrypt with … --stream)"
	}
	root := newRootCmd(&env{stdin: strings.NewReader(""), stdout: io.Discard, stderr: io.Discard, getenv: os.Getenv})
	has := func(c *cobra.Command, name string) bool {
		return name == "help" || c.Flags().Lookup(name) != nil || c.InheritedFlags().Lookup(name) != nil
	}
	checked := 0
	check := func(c *cobra.Command, text string) {
		for _, m := range flagRe.FindAllStringSubmatch(text, -1) {
			checked++
			if !has(c, m[1]) && !allowed[c.CommandPath()+" --"+m[1]] {
				t.Errorf("the help of %q mentions --%s, which %q does not have: %q", c.CommandPath(), m[1], c.CommandPath(), strings.TrimSpace(text))
			}
		}
	}
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		// The root's text describes flags the client commands share.
		if c != root {
			for _, text := range []string{c.Use, c.Long, c.Example} {
				// A shell line continued with a backslash is one line.
				text = strings.ReplaceAll(text, "\\\n", " ")
				for line := range strings.SplitSeq(text, "\n") {
					if slices.ContainsFunc(foreign, func(f string) bool { return strings.Contains(line, f) }) {
						continue
					}
					// "keybroker ciphertext" in prose names no command.
					if m := invokeRe.FindStringSubmatchIndex(line); m != nil {
						if target, _, err := root.Find(strings.Fields(line[m[2]:m[3]])); err == nil && target != root {
							check(target, line[m[3]:])
							continue
						}
					}
					check(c, line)
				}
			}
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(root)
	if checked < 100 {
		t.Errorf("only %d flag mentions checked: is the pattern right?", checked)
	}
}
