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

// docFields reads the "## Fields" table of docs/config.md: field path ->
// its cells (type, default, range, description).
func docFields(t *testing.T) map[string][]string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "docs", "config.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(data), "\n## Fields\n")
	if !ok {
		t.Fatal("docs/config.md has no ## Fields section")
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
			t.Errorf("docs/config.md: %s is documented twice", name)
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
		case f.Type.Kind() == reflect.Slice && f.Type.Elem().Kind() == reflect.Struct:
			schemaFields(f.Type.Elem(), path+"[]", out)
		}
	}
}

// valueAt follows a doc path (no list fields) through v.
func valueAt(v reflect.Value, path string) reflect.Value {
	for name := range strings.SplitSeq(path, ".") {
		fields, _ := yamlFields(v.Type())
		v = v.FieldByIndex(fields[name].Index)
	}
	return v
}

func TestDocFieldTable(t *testing.T) {
	rows := docFields(t)
	schema := map[string]reflect.Type{}
	schemaFields(reflect.TypeFor[Central](), "", schema)
	for path := range schema {
		if _, ok := rows[path]; !ok {
			t.Errorf("docs/config.md: field %s is not in the table", path)
		}
	}
	defaults := reflect.ValueOf(DefaultCentral())
	for path, cells := range rows {
		typ, ok := schema[path]
		if !ok {
			t.Errorf("docs/config.md: %s is in the table but not in config.Central", path)
			continue
		}
		// The type column matches the Go type.
		docType := cells[0]
		var kinds []string
		switch {
		case typ == durationType:
			kinds = []string{"duration"}
		case typ.Kind() == reflect.Struct:
			kinds = []string{"mapping"}
		case typ.Kind() == reflect.Slice:
			kinds = []string{"list", "list of paths"}
		case typ.Kind() == reflect.String:
			kinds = []string{"string", "path", "key URI", "host:port"}
		case typ.Kind() == reflect.Int || typ.Kind() == reflect.Uint64:
			kinds = []string{"integer"}
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
		var got string
		switch {
		case v.Type() == durationType:
			got = formatDuration(time.Duration(v.Int()))
		case v.CanInt():
			got = strconv.FormatInt(v.Int(), 10)
		case v.CanUint():
			got = strconv.FormatUint(v.Uint(), 10)
		default:
			got = v.String()
		}
		if want := strings.Trim(def, "`"); got != want {
			t.Errorf("docs/config.md: %s default is %s, DefaultCentral has %s", path, want, got)
		}
	}
}

// TestDocValidationExamples runs the invalid examples in docs/config.md
// (yaml blocks starting "# invalid") and compares the errors with the
// text block after each.
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
		_, err := ParseCentral("central.yaml", []byte("# invalid"+block+"\n"), "/etc/keybroker")
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
