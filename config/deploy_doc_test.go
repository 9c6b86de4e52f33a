package config

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestDeployDocExamples loads every yaml block of docs/deploy.md's
// section on three central nodes: a block that starts with "# central.yaml"
// as a central configuration, "# edge.yaml" as an edge's; any other block
// is an error, so no example goes unchecked.
func TestDeployDocExamples(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("..", "docs", "deploy.md"))
	if err != nil {
		t.Fatal(err)
	}
	const heading = "\n## Three central nodes on etcd\n"
	_, section, ok := strings.Cut(string(data), heading)
	if !ok {
		t.Fatalf("docs/deploy.md has no %q section", strings.TrimSpace(heading))
	}
	section, _, _ = strings.Cut(section, "\n## ")
	blocks := regexp.MustCompile("(?s)```yaml\n(.*?)```").FindAllStringSubmatch(section, -1)
	var centrals, edges int
	for i, m := range blocks {
		b := m[1]
		switch {
		case strings.HasPrefix(b, "# central.yaml"):
			c, err := ParseCentral("central.yaml", []byte(b), "/etc/keybroker")
			if err != nil {
				t.Errorf("yaml block %d of the section (a central.yaml) does not load:\n%v", i+1, err)
				continue
			}
			if c.Store.Etcd == nil || len(c.Store.Etcd.Endpoints) != 3 || c.Store.Etcd.TLS.Cert == "" {
				t.Errorf("yaml block %d: store %+v, want etcd with three endpoints and a client certificate", i+1, c.Store.Etcd)
			}
			centrals++
		case strings.HasPrefix(b, "# edge.yaml"):
			e, err := ParseEdge("edge.yaml", []byte(b), "/etc/keybroker")
			if err != nil {
				t.Errorf("yaml block %d of the section (an edge.yaml) does not load:\n%v", i+1, err)
				continue
			}
			if got := len(e.Central.All()); got != 3 {
				t.Errorf("yaml block %d: the edge lists %d central nodes, want 3", i+1, got)
			}
			edges++
		default:
			t.Errorf("yaml block %d of the section starts with neither # central.yaml nor # edge.yaml:\n%s", i+1, b)
		}
	}
	if centrals == 0 || edges == 0 {
		t.Errorf("the section has %d central and %d edge examples, want at least one of each", centrals, edges)
	}
}
