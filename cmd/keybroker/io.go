package main

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
)

// The API's limits (see keybroker.proto), enforced before sending.
const (
	maxPlaintext  = 4 << 20
	maxCiphertext = 4<<20 + 1<<10
	maxMessage    = 64 << 10 // signed and MACed messages
	maxRandom     = 1024
	digestSize    = 32 // SHA-256
	// maxTag bounds a --signature or --mac file; real ones are under 100
	// bytes, so anything this big is the wrong file.
	maxTag = 8 << 10
)

// sizeText spells a limit the way keybroker.proto does: "4 MiB + 1 KiB".
func sizeText(n int) string {
	mib, kib := n>>20, n&(1<<20-1)
	switch {
	case n%(1<<10) != 0:
		return fmt.Sprintf("%d bytes", n)
	case kib == 0:
		return fmt.Sprintf("%d MiB", mib)
	case mib == 0:
		return fmt.Sprintf("%d KiB", kib>>10)
	}
	return fmt.Sprintf("%d MiB + %d KiB", mib, kib>>10)
}

func isStdio(path string) bool { return path == "" || path == "-" }

// readInput reads what (e.g. "plaintext") from path, or stdin for "-",
// refusing more than limit bytes. It reads at most limit+1 bytes.
func (a *app) readInput(path string, limit int, what string) ([]byte, error) {
	r, name := a.env.stdin, "stdin"
	if !isStdio(path) {
		f, err := os.Open(path)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		r, name = f, path
	}
	data, err := io.ReadAll(io.LimitReader(r, int64(limit)+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", name, err)
	}
	if len(data) > limit {
		return nil, invalidInputf("the %s in %s is larger than %s, the most keybroker accepts", what, name, sizeText(limit))
	}
	return data, nil
}

// emitBlob writes a command's binary result data and its description.
// With --out FILE the raw bytes go to the file and stdout gets the summary
// (text) or the JSON object without the blob. Otherwise stdout gets the
// JSON object with the blob in base64, or the bytes themselves: raw, or
// base64 and a newline when stdout is a terminal. object builds the JSON
// object around blob (nil: leave the binary field out).
func (a *app) emitBlob(out string, data []byte, object func(blob []byte) any, summary string) error {
	if !isStdio(out) {
		// A regular file is written under a fresh temporary name and
		// renamed into place (a link at the name is replaced, not followed
		// — --out names the file, like a shell redirection that cannot be
		// turned against another file); a FIFO or /dev/fd/N is written in
		// place.
		o, err := a.createOutput(out)
		if err != nil {
			return err
		}
		if _, err := o.w.Write(data); err != nil {
			o.abort()
			return err
		}
		if err := o.commit(); err != nil {
			return err
		}
		if a.jsonOutput() {
			return a.printJSON(object(nil))
		}
		if summary != "" {
			summary += "; "
		}
		_, err = fmt.Fprintf(a.env.stdout, "%swrote %d bytes to %s\n", summary, len(data), out)
		return err
	}
	if a.jsonOutput() {
		if data == nil {
			data = []byte{} // "": the field is there even when empty
		}
		return a.printJSON(object(data))
	}
	return a.writeBinary(data)
}

// writeBinary writes data to stdout: raw, or base64 on a terminal.
func (a *app) writeBinary(data []byte) error {
	if a.env.stdoutIsTerminal {
		_, err := fmt.Fprintln(a.env.stdout, base64Text(data))
		return err
	}
	_, err := a.env.stdout.Write(data)
	return err
}

func base64Text(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

// printJSON writes v as one line of JSON.
func (a *app) printJSON(v any) error {
	enc := json.NewEncoder(a.env.stdout)
	enc.SetEscapeHTML(false)
	return enc.Encode(v)
}

// printFields prints name: value rows, aligned.
func (a *app) printFields(rows [][2]string) error {
	tw := tabwriter.NewWriter(a.env.stdout, 0, 0, 1, ' ', 0)
	for _, r := range rows {
		fmt.Fprintf(tw, "%s:\t%s\n", r[0], r[1])
	}
	return tw.Flush()
}

// printTable prints rows as aligned columns, the first row the header.
func (a *app) printTable(rows [][]string) error {
	tw := tabwriter.NewWriter(a.env.stdout, 0, 0, 2, ' ', 0)
	for _, r := range rows {
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	return tw.Flush()
}

// enumValue is a string flag with a closed set of values.
type enumValue struct {
	value   string
	allowed []string
}

func newEnum(def string, allowed ...string) *enumValue {
	return &enumValue{value: def, allowed: allowed}
}

func (v *enumValue) String() string { return v.value }
func (v *enumValue) Type() string   { return strings.Join(v.allowed, "|") }

func (v *enumValue) Set(s string) error {
	if !slices.Contains(v.allowed, s) {
		return fmt.Errorf("%q is not one of %s", s, strings.Join(v.allowed, ", "))
	}
	v.value = s
	return nil
}

// pairsValue is a repeatable k=v flag: labels, encryption context.
type pairsValue struct {
	m map[string]string
}

func (v *pairsValue) Type() string { return "k=v" }

func (v *pairsValue) String() string {
	var b strings.Builder
	for i, k := range slices.Sorted(maps.Keys(v.m)) {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(k + "=" + v.m[k])
	}
	return b.String()
}

func (v *pairsValue) Set(s string) error {
	k, val, ok := strings.Cut(s, "=")
	if !ok {
		return fmt.Errorf("%q is not k=v", s)
	}
	if k == "" {
		return fmt.Errorf("%q has an empty key", s)
	}
	if old, dup := v.m[k]; dup && old != val {
		return fmt.Errorf("%q is given twice with different values", k)
	}
	if v.m == nil {
		v.m = make(map[string]string)
	}
	v.m[k] = val
	return nil
}

// Argument checks; their errors are usage errors (they run before RunE).

func noArgs(_ *cobra.Command, args []string) error {
	if len(args) > 0 {
		return fmt.Errorf("unexpected argument %q", args[0])
	}
	return nil
}

// subcommands is the Args of a command that only groups others.
func subcommands(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return fmt.Errorf("unknown command %q for %q", args[0], cmd.CommandPath())
	}
	return nil
}

// helpRun is the Run of a command that only groups others.
func helpRun(cmd *cobra.Command, _ []string) error { return cmd.Help() }

// exactly wants one positional argument per name.
func exactly(names ...string) cobra.PositionalArgs {
	return func(_ *cobra.Command, args []string) error {
		if len(args) < len(names) {
			return fmt.Errorf("missing %s", strings.Join(names[len(args):], " "))
		}
		if len(args) > len(names) {
			return fmt.Errorf("unexpected argument %q", args[len(names)])
		}
		return nil
	}
}
