package config

import (
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"go.yaml.in/yaml/v3"
)

// FuzzParseCentral checks what holds for any input: ParseCentral does not
// panic; every error is a *Error naming the file; and a configuration that
// loads validates again, and survives being written out as YAML and
// loaded again unchanged.
func FuzzParseCentral(f *testing.F) {
	for _, b := range docBlocks(f) {
		f.Add(b)
	}
	for _, s := range []string{
		base,
		base + "---\nnode_id: x\n",
		strings.Replace(base, "reload_interval: 10s", "reload_interval: 0s", 1),
		strings.Replace(base, "listen: 127.0.0.1:7443", "listen: &a 127.0.0.1:7443", 1) + "shutdown_timeout: *a\n",
		"node_id: [a, {b: c}]\npolicy: {paths: [a, b, a]}\n",
		"tls:\n  <<: {ca: x}\n",
		"backends:\n  - {name: a, uri: \"pkcs11:token=kb?pin-value=1\"}\n",
		"material_cache: {size: 0x10, ttl: 1h1m1s}\n",
		"[a\n",
		"",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		c, err := ParseCentral("f.yaml", []byte(s), "/etc/keybroker")
		if err != nil {
			for _, e := range flatten(err) {
				var ce *Error
				if !errors.As(e, &ce) || ce.File != "f.yaml" {
					t.Fatalf("error %q (%T) is not a *Error naming the file", e, e)
				}
			}
			return
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("loaded config does not validate: %v", err)
		}
		out, err := yaml.Marshal(c)
		if err != nil {
			t.Fatalf("Marshal: %v", err)
		}
		again, err := ParseCentral("again.yaml", out, "/etc/keybroker")
		if err != nil {
			t.Fatalf("written out, the config does not load:\n%s\n%v", out, err)
		}
		if diff := cmp.Diff(c, again); diff != "" {
			t.Fatalf("written out and loaded again, the config changed (-first +again):\n%s", diff)
		}
	})
}

// FuzzParseEdge is FuzzParseCentral for the edge's configuration.
func FuzzParseEdge(f *testing.F) {
	for _, b := range docBlocks(f) {
		f.Add(b)
	}
	for _, s := range []string{
		edgeBase,
		edgeBase + "prefetch: false\nmax_staleness: 0s\n",
		strings.Replace(edgeBase, "listen: 10.0.0.5:7443", "listen: \":7443\"\nadvertise_address: \"[::1]:7443\"", 1),
		strings.Replace(edgeBase, "address: central.kb.example:7443", "address: \"[fe80::1%eth0]:1\"\n  server_name: \"::1\"", 1),
		"labels: {a: b, a: c, ~: d, <<: {e: f}, \"\": \"\", \"x\\ny\": z}\n",
		"labels:\n  ? [a]\n  : b\n  !!binary aGk=: c\n",
		"prefetch: yes\nreconnect: {initial_backoff: 1m, max_backoff: 100ms}\n",
		"central: [a]\n",
		"",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		e, err := ParseEdge("f.yaml", []byte(s), "/etc/keybroker")
		if err != nil {
			for _, e := range flatten(err) {
				var ce *Error
				if !errors.As(e, &ce) || ce.File != "f.yaml" {
					t.Fatalf("error %q (%T) is not a *Error naming the file", e, e)
				}
			}
			return
		}
		if err := e.Validate(); err != nil {
			t.Fatalf("loaded config does not validate: %v", err)
		}
		out, err := yaml.Marshal(e)
		if err != nil {
			t.Fatalf("Marshal: %v", err)
		}
		again, err := ParseEdge("again.yaml", out, "/etc/keybroker")
		if err != nil {
			t.Fatalf("written out, the config does not load:\n%s\n%v", out, err)
		}
		if diff := cmp.Diff(e, again); diff != "" {
			t.Fatalf("written out and loaded again, the config changed (-first +again):\n%s", diff)
		}
	})
}

func flatten(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}
