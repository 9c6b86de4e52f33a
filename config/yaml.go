package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"go.yaml.in/yaml/v3"
)

// MaxFileSize is the largest configuration file accepted, 1 MiB; a real
// one is a few kilobytes, and the bound keeps a wrong path (a log, a
// device) from being read whole.
const MaxFileSize = 1 << 20

// readFile reads at most MaxFileSize bytes of path, and reports a larger
// file as a problem rather than reading it all.
func readFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxFileSize+1))
	if err != nil {
		return nil, err
	}
	return data, nil
}

// decode decodes data, which must be a single YAML document, into out, a
// pointer to a struct that already holds the defaults: fields the document
// leaves out keep them. Before decoding, the document's tree is checked
// against out's type, so that every problem names its field and line and
// all of them are reported at once: unknown and repeated fields, values of
// the wrong kind or type, null values and aliases. It returns the line of
// every field present, by field path, for later validation errors.
func decode(data []byte, out any) (map[string]int, problems) {
	var probs problems
	if len(data) > MaxFileSize {
		probs.at(0, "", fmt.Errorf("larger than the limit of %s", formatBytes(MaxFileSize)))
		return nil, probs
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			probs.at(0, "", errors.New("empty: no YAML document"))
		} else {
			probs = append(probs, yamlError(err, true))
		}
		return nil, probs
	}
	var next yaml.Node
	switch err := dec.Decode(&next); {
	case err == nil:
		probs.at(next.Line, "", errors.New("a second YAML document starts here; a configuration is one document"))
		return nil, probs
	case !errors.Is(err, io.EOF):
		probs = append(probs, yamlError(err, true))
		return nil, probs
	}
	root := &doc
	if doc.Kind == yaml.DocumentNode && len(doc.Content) == 1 {
		root = doc.Content[0]
	}
	if root.Kind == yaml.ScalarNode && root.ShortTag() == "!!null" {
		probs.at(0, "", errors.New("empty: the document has no fields"))
		return nil, probs
	}

	w := &walker{lines: map[string]int{}}
	w.walk(root, reflect.TypeOf(out).Elem(), "")
	if len(w.probs) > 0 {
		return w.lines, w.probs
	}
	// The walk has checked everything the decoder would refuse; decoding
	// strictly all the same means a gap in the walk cannot let an unknown
	// field through.
	strict := yaml.NewDecoder(bytes.NewReader(data))
	strict.KnownFields(true)
	if err := strict.Decode(out); err != nil {
		var te *yaml.TypeError
		if errors.As(err, &te) {
			for _, msg := range te.Errors {
				probs = append(probs, yamlError(errors.New(msg), false))
			}
		} else {
			probs = append(probs, yamlError(err, true))
		}
	}
	return w.lines, probs
}

var yamlLineRe = regexp.MustCompile(`^(?:yaml: )?line (\d+): `)

// yamlParserProblems start the messages of libyaml's parser (as opposed to
// its scanner). yaml v3 reports their lines 0-based — one too low, and none
// at all on the first line — because its parser.fail adds 1 to the 0-based
// mark for scanner errors only; yamlError corrects them. TestBadConfigs
// pins the corrected lines, so an upstream fix shows up as a test failure.
var yamlParserProblems = []string{
	"did not find expected",
	"found undefined tag handle",
	"found duplicate %YAML directive",
	"found duplicate %TAG directive",
	"found incompatible YAML document",
}

// yamlError turns a yaml error, "yaml: line 3: did not find expected key",
// into an Error at that line; syntax says it comes from the parser, whose
// lines need correcting, rather than from decoding a value.
func yamlError(err error, syntax bool) *Error {
	msg := err.Error()
	line := 0
	if m := yamlLineRe.FindStringSubmatch(msg); m != nil {
		line, _ = strconv.Atoi(m[1])
		msg = msg[len(m[0]):]
	} else {
		msg = strings.TrimPrefix(msg, "yaml: ")
	}
	for _, p := range yamlParserProblems {
		if syntax && strings.HasPrefix(msg, p) {
			line++
			break
		}
	}
	return &Error{Line: line, Err: errors.New(msg)}
}

// walker checks a YAML tree against the Go type it will be decoded into.
type walker struct {
	lines map[string]int // field path -> line of its key or list item
	probs problems
}

var durationType = reflect.TypeFor[time.Duration]()

func (w *walker) fail(line int, field, format string, args ...any) {
	w.probs.at(line, field, fmt.Errorf(format, args...))
}

func (w *walker) walk(n *yaml.Node, t reflect.Type, path string) {
	if n.Kind == yaml.AliasNode {
		w.fail(n.Line, path, "YAML aliases are not allowed in a configuration; write the value out")
		return
	}
	if n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null" {
		w.fail(n.Line, path, "no value; give one, or leave the field out for its default")
		return
	}
	if t.Kind() == reflect.Pointer {
		t = t.Elem() // an optional block: given, it is checked as its value
	}
	switch t.Kind() {
	case reflect.Struct:
		if n.Kind != yaml.MappingNode {
			w.fail(n.Line, path, "want a mapping of fields, found %s", describe(n))
			return
		}
		fields, names := yamlFields(t)
		seen := map[string]int{}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			if k.Kind != yaml.ScalarNode {
				w.fail(k.Line, path, "a key must be a plain field name, found %s", describe(k))
				continue
			}
			fp := joinField(path, k.Value)
			if prev, dup := seen[k.Value]; dup {
				w.fail(k.Line, fp, "given twice; first on line %d", prev)
				continue
			}
			seen[k.Value] = k.Line
			f, ok := fields[k.Value]
			switch {
			case k.Value == "<<" && k.ShortTag() == "!!merge":
				w.fail(k.Line, path, "YAML merge keys (<<) are not allowed in a configuration; write the fields out")
				continue
			case !ok:
				w.fail(k.Line, fp, "unknown field%s", suggest(k.Value, names))
				continue
			}
			w.lines[fp] = k.Line
			w.walk(v, f.Type, fp)
		}
	case reflect.Map:
		if n.Kind != yaml.MappingNode {
			w.fail(n.Line, path, "want a mapping, found %s", describe(n))
			return
		}
		seen := map[string]int{}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			switch {
			case k.Kind != yaml.ScalarNode:
				w.fail(k.Line, path, "a key must be a single value, found %s", describe(k))
				continue
			case k.Value == "<<" && k.ShortTag() == "!!merge":
				w.fail(k.Line, path, "YAML merge keys (<<) are not allowed in a configuration; write the entries out")
				continue
			case k.ShortTag() == "!!null":
				w.fail(k.Line, path, "a key is missing; write it out")
				continue
			}
			fp := mapField(path, k.Value)
			if prev, dup := seen[k.Value]; dup {
				w.fail(k.Line, fp, "given twice; first on line %d", prev)
				continue
			}
			seen[k.Value] = k.Line
			w.lines[fp] = k.Line
			w.scalar(k, t.Key(), fp)
			w.walk(v, t.Elem(), fp)
		}
	case reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			w.fail(n.Line, path, "want a list, found %s", describe(n))
			return
		}
		for i, item := range n.Content {
			ip := fmt.Sprintf("%s[%d]", path, i)
			w.lines[ip] = item.Line
			w.walk(item, t.Elem(), ip)
		}
	default:
		if n.Kind != yaml.ScalarNode {
			w.fail(n.Line, path, "want a single value, found %s", describe(n))
			return
		}
		w.scalar(n, t, path)
	}
}

// scalar checks that a value decodes into t, and is written as the type
// says: durations with a unit (yaml would refuse a bare number anyway, and
// "30" could mean seconds or nanoseconds), numbers as whole numbers (yaml
// would quietly truncate 1.5 or accept 1e3), booleans as true or false.
func (w *walker) scalar(n *yaml.Node, t reflect.Type, path string) {
	v := reflect.New(t)
	err := n.Decode(v.Interface())
	switch {
	case t == durationType:
		if err != nil {
			w.fail(n.Line, path, "%q is not a duration: write a number with a unit, such as 0s, 500ms, 10s, 5m or 1h", n.Value)
		}
	case t.Kind() >= reflect.Int && t.Kind() <= reflect.Int64:
		if err != nil || n.ShortTag() != "!!int" {
			w.fail(n.Line, path, "%q is not a whole number", n.Value)
		}
	case t.Kind() >= reflect.Uint && t.Kind() <= reflect.Uint64:
		if err != nil || n.ShortTag() != "!!int" {
			w.fail(n.Line, path, "%q is not a whole number of 0 or more", n.Value)
		}
	case t.Kind() == reflect.Bool:
		// yaml would also take yes, no, on and off, and other spellings
		// of true and false.
		if err != nil || n.ShortTag() != "!!bool" || (n.Value != "true" && n.Value != "false") {
			w.fail(n.Line, path, "%q is not true or false", n.Value)
		}
	case t.Kind() == reflect.String:
		// Any scalar is a string to yaml; !!binary could still smuggle
		// bytes that are not text.
		if err != nil || !utf8.ValidString(v.Elem().String()) {
			w.fail(n.Line, path, "not valid UTF-8 text")
		}
	default:
		if err != nil {
			w.fail(n.Line, path, "%q: %v", n.Value, err)
		}
	}
}

func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.AliasNode:
		return "an alias"
	}
	return fmt.Sprintf("the value %q", n.Value)
}

func joinField(path, name string) string {
	if path == "" {
		return name
	}
	return path + "." + name
}

// yamlFields returns the fields yaml decodes into, by name, and the names
// in declaration order.
func yamlFields(t reflect.Type) (map[string]reflect.StructField, []string) {
	m := map[string]reflect.StructField{}
	var names []string
	for f := range t.Fields() {
		if !f.IsExported() {
			continue
		}
		tag, opts, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if opts == "inline" && f.Anonymous && f.Type.Kind() == reflect.Struct {
			// An embedded block (Node): its fields are the outer struct's,
			// in its place, reached through it.
			inner, innerNames := yamlFields(f.Type)
			for _, name := range innerNames {
				sf := inner[name]
				sf.Index = append(slices.Clone(f.Index), sf.Index...)
				m[name] = sf
			}
			names = append(names, innerNames...)
			continue
		}
		switch tag {
		case "-":
			continue
		case "":
			tag = strings.ToLower(f.Name)
		}
		m[tag] = f
		names = append(names, tag)
	}
	return m, names
}

// suggest names the closest known field, or lists them all.
func suggest(name string, names []string) string {
	best, bestD := "", math.MaxInt
	for _, n := range names {
		if d := editDistance(name, n); d < bestD {
			best, bestD = n, d
		}
	}
	if best != "" && bestD*3 <= len(best) {
		return fmt.Sprintf("; did you mean %s?", best)
	}
	return "; known fields are " + strings.Join(names, ", ")
}

// editDistance is the optimal-string-alignment distance between a and b,
// in bytes: insertions, deletions, substitutions and swaps of neighbours
// cost 1, so "relaod" is one step from "reload". It gives up (returning a
// large number) on names longer than any field's.
func editDistance(a, b string) int {
	if len(a) > 64 || len(b) > 64 {
		return math.MaxInt
	}
	d := make([][]int, len(a)+1)
	for i := range d {
		d[i] = make([]int, len(b)+1)
		d[i][0] = i
	}
	for j := range d[0] {
		d[0][j] = j
	}
	for i := 1; i <= len(a); i++ {
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			d[i][j] = min(d[i-1][j]+1, d[i][j-1]+1, d[i-1][j-1]+cost)
			if i > 1 && j > 1 && a[i-1] == b[j-2] && a[i-2] == b[j-1] {
				d[i][j] = min(d[i][j], d[i-2][j-2]+1)
			}
		}
	}
	return d[len(a)][len(b)]
}
