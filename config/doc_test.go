package config

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"
)

// docFields reads the field table in the section of docs/config.md under
// heading ("## Fields"): field path -> its cells (type, default, range,
// description).
func docFields(t *testing.T, heading string) map[string][]string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "docs", "config.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(data), "\n"+heading+"\n")
	if !ok {
		t.Fatalf("docs/config.md has no %s section", heading)
	}
	section, _, _ = strings.Cut(section, "\n## ")
	rows := map[string][]string{}
	for line := range strings.SplitSeq(section, "\n") {
		if !strings.HasPrefix(line, "| `") {
			continue
		}
		cells := strings.Split(strings.Trim(line, "|"), "|")
		for i := range cells {
			cells[i] = strings.TrimSpace(cells[i])
		}
		if len(cells) != 5 {
			t.Fatalf("docs/config.md: row %q has %d cells, want 5", line, len(cells))
		}
		name := strings.Trim(cells[0], "`")
		if _, dup := rows[name]; dup {
			t.Errorf("docs/config.md: %s: %s is documented twice", heading, name)
		}
		rows[name] = cells[1:]
	}
	return rows
}

// schemaFields lists every field path of t the way the doc writes them
// (backends[].name), with its Go type.
func schemaFields(t reflect.Type, prefix string, out map[string]reflect.Type) {
	fields, names := yamlFields(t)
	for _, name := range names {
		f := fields[name]
		path := joinField(prefix, name)
		out[path] = f.Type
		switch {
		case f.Type.Kind() == reflect.Struct:
			schemaFields(f.Type, path, out)
		case f.Type.Kind() == reflect.Pointer && f.Type.Elem().Kind() == reflect.Struct:
			schemaFields(f.Type.Elem(), path, out)
		case f.Type.Kind() == reflect.Slice && f.Type.Elem().Kind() == reflect.Struct:
			schemaFields(f.Type.Elem(), path+"[]", out)
		}
	}
}

// valueAt follows a doc path (no list fields) through v; it is the zero
// Value past a nil pointer (an optional block the defaults leave out).
func valueAt(v reflect.Value, path string) reflect.Value {
	for name := range strings.SplitSeq(path, ".") {
		if v.Kind() == reflect.Pointer {
			if v.IsNil() {
				return reflect.Value{}
			}
			v = v.Elem()
		}
		fields, _ := yamlFields(v.Type())
		v = v.FieldByIndex(fields[name].Index)
	}
	return v
}

func TestDocFieldTable(t *testing.T) {
	for _, tc := range []struct {
		heading  string // of the section holding the table
		defaults any    // DefaultCentral() or DefaultEdge()
	}{
		{"## Fields", DefaultCentral()},
		{"## Edge", DefaultEdge()},
	} {
		t.Run(reflect.TypeOf(tc.defaults).Name(), func(t *testing.T) {
			checkDocTable(t, tc.heading, reflect.ValueOf(tc.defaults))
		})
	}
}

// checkDocTable checks the field table under heading against the type of
// defaults: every field is in it, with its type, and with its default
// where the table writes one as code.
func checkDocTable(t *testing.T, heading string, defaults reflect.Value) {
	rows := docFields(t, heading)
	schema := map[string]reflect.Type{}
	schemaFields(defaults.Type(), "", schema)
	for path := range schema {
		if _, ok := rows[path]; !ok {
			t.Errorf("docs/config.md: %s: field %s is not in the table", heading, path)
		}
	}
	for path, cells := range rows {
		typ, ok := schema[path]
		if !ok {
			t.Errorf("docs/config.md: %s: %s is in the table but not in config.%s", heading, path, defaults.Type().Name())
			continue
		}
		// The type column matches the Go type.
		docType := cells[0]
		var kinds []string
		switch {
		case typ == durationType:
			kinds = []string{"duration"}
		case typ.Kind() == reflect.Struct, typ.Kind() == reflect.Pointer && typ.Elem().Kind() == reflect.Struct:
			kinds = []string{"mapping"}
		case typ.Kind() == reflect.Slice:
			kinds = []string{"list", "list of paths"}
		case typ.Kind() == reflect.String:
			kinds = []string{"string", "path", "key URI", "host:port"}
		case typ.Kind() == reflect.Int || typ.Kind() == reflect.Uint64:
			kinds = []string{"integer"}
		case typ.Kind() == reflect.Bool:
			kinds = []string{"boolean"}
		case typ.Kind() == reflect.Map && typ.Key().Kind() == reflect.String && typ.Elem().Kind() == reflect.String:
			kinds = []string{"mapping of strings"}
		}
		found := false
		for _, k := range kinds {
			found = found || docType == k
		}
		if !found {
			t.Errorf("docs/config.md: %s has type %q; its Go type %s wants one of %q", path, docType, typ, kinds)
		}
		// A default written as code is the code's default.
		def := cells[1]
		if !strings.HasPrefix(def, "`") || strings.Contains(path, "[]") || strings.Contains(def, "<") {
			continue
		}
		v := valueAt(defaults, path)
		if !v.IsValid() {
			continue // under an optional block: its defaults apply when it is given
		}
		var got string
		switch {
		case v.Type() == durationType:
			got = formatDuration(time.Duration(v.Int()))
		case v.CanInt():
			got = strconv.FormatInt(v.Int(), 10)
		case v.CanUint():
			got = strconv.FormatUint(v.Uint(), 10)
		case v.Kind() == reflect.Bool:
			got = strconv.FormatBool(v.Bool())
		case v.Kind() == reflect.Slice && v.Type().Elem().Kind() == reflect.String:
			got = "[" + strings.Join(v.Interface().([]string), ", ") + "]"
		case v.Kind() == reflect.Slice && v.Len() == 0:
			got = "[]"
		default:
			got = v.String()
		}
		if want := strings.Trim(def, "`"); got != want {
			t.Errorf("docs/config.md: %s default is %s, Default%s has %s", path, want, defaults.Type().Name(), got)
		}
	}
}

// TestDocValidationExamples runs the invalid examples in docs/config.md
// (yaml blocks starting "# invalid", or "# invalid edge.yaml" for an
// edge's) and compares the errors with the text block after each.
func TestDocValidationExamples(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("..", "docs", "config.md"))
	if err != nil {
		t.Fatal(err)
	}
	rest := string(data)
	n := 0
	for {
		_, after, ok := strings.Cut(rest, "\n```yaml\n# invalid")
		if !ok {
			break
		}
		n++
		block, after, _ := strings.Cut(after, "\n```\n")
		_, after, ok = strings.Cut(after, "```text\n")
		if !ok {
			t.Fatal("docs/config.md: an invalid example has no ```text block of errors after it")
		}
		want, after, _ := strings.Cut(after, "\n```\n")
		rest = after
		var err error
		if strings.HasPrefix(block, " edge.yaml") {
			_, err = ParseEdge("edge.yaml", []byte("# invalid"+block+"\n"), "/etc/keybroker")
		} else {
			_, err = ParseCentral("central.yaml", []byte("# invalid"+block+"\n"), "/etc/keybroker")
		}
		if err == nil {
			t.Errorf("invalid example %d loads", n)
			continue
		}
		if err.Error() != want {
			t.Errorf("invalid example %d: errors differ from docs/config.md:\ngot:\n%s\nwant:\n%s", n, err, want)
		}
	}
	if n == 0 {
		t.Error("docs/config.md has no invalid examples")
	}
}

// TestFieldDocs enforces the house rule that every field of an exported
// configuration struct has a doc comment.
func TestFieldDocs(t *testing.T) {
	fset := token.NewFileSet()
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, parser.ParseComments)
		if err != nil {
			t.Fatal(err)
		}
		ast.Inspect(f, func(n ast.Node) bool {
			ts, ok := n.(*ast.TypeSpec)
			if !ok || !ts.Name.IsExported() {
				return true
			}
			st, ok := ts.Type.(*ast.StructType)
			if !ok {
				return true
			}
			for _, field := range st.Fields.List {
				if field.Doc == nil {
					t.Errorf("%s: a field of %s has no doc comment", fset.Position(field.Pos()), ts.Name)
				}
			}
			return true
		})
	}
}
