package policy

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/cedar-policy/cedar-go"
)

const demo = `
@id("clients-use-app-keys")
permit (principal is Client, action in [Action::"Encrypt", Action::"Decrypt", Action::"GenerateDataKey"], resource is Key)
when { resource.hasTag("app") && principal.hasTag("app") && resource.getTag("app") == principal.getTag("app") };

@id("admins-manage")
permit (principal is Admin, action, resource);

@id("no-prod-for-test-clients")
forbid (principal is Client, action, resource is Key)
when { principal.hasTag("env") && principal.getTag("env") == "test" && resource.hasTag("env") && resource.getTag("env") == "prod" };

@id("placement-by-region")
permit (principal is Edge, action == Action::"HoldMaterial", resource is Key)
when { resource.hasTag("region") && resource.getTag("region") == principal.region };

@id("random-for-all")
permit (principal is Client, action == Action::"GenerateRandom", resource is Service);
`

func demoSet(t *testing.T) *Set {
	t.Helper()
	s, err := Parse(map[string][]byte{"demo.cedar": []byte(demo)})
	if err != nil {
		t.Fatalf("Parse(demo) = %v", err)
	}
	return s
}

func TestAuthorize(t *testing.T) {
	s := demoSet(t)
	app := Principal{Kind: KindClient, Name: "billing", TrustDomain: "kb.test", Labels: map[string]string{"app": "billing"}}
	testClient := Principal{Kind: KindClient, Name: "ci", Labels: map[string]string{"app": "billing", "env": "test"}}
	admin := Principal{Kind: KindAdmin, Name: "ops"}
	eu := Principal{Kind: KindEdge, Name: "edge-eu-1", Region: "eu"}
	us := Principal{Kind: KindEdge, Name: "edge-us-1", Region: "us"}
	billingKey := Key{Name: "payments", Type: "aes-256-gcm", Mode: "derive", Labels: map[string]string{"app": "billing", "region": "eu"}}
	prodKey := Key{Name: "payments-prod", Type: "aes-256-gcm", Mode: "derive", Labels: map[string]string{"app": "billing", "env": "prod"}}
	otherKey := Key{Name: "hr", Labels: map[string]string{"app": "hr"}}

	for _, tc := range []struct {
		name   string
		p      Principal
		a      Action
		k      *Key
		allow  bool
		policy string
	}{
		{"client on own app key", app, Encrypt, &billingKey, true, "clients-use-app-keys"},
		{"client on other app key", app, Encrypt, &otherKey, false, "default-deny"},
		{"client action not granted", app, Sign, &billingKey, false, "default-deny"},
		{"forbid wins over permit", testClient, Encrypt, &prodKey, false, "no-prod-for-test-clients"},
		{"test client on non-prod", testClient, Decrypt, &billingKey, true, "clients-use-app-keys"},
		{"admin anything", admin, RotateKey, &otherKey, true, "admins-manage"},
		{"admin is not an edge", admin, HoldMaterial, &billingKey, false, "schema"},
		{"eu edge holds eu key", eu, HoldMaterial, &billingKey, true, "placement-by-region"},
		{"us edge may not hold eu key", us, HoldMaterial, &billingKey, false, "default-deny"},
		{"edge key without region", eu, HoldMaterial, &otherKey, false, "default-deny"},
		{"edge cannot encrypt", eu, Encrypt, &billingKey, false, "schema"},
		{"unknown kind", Principal{Kind: "robot", Name: "x"}, Encrypt, &billingKey, false, "default-deny"},
		{"empty name", Principal{Kind: KindClient}, Encrypt, &billingKey, false, "default-deny"},
		{"service action", app, GenerateRandom, nil, true, "random-for-all"},
		{"service action denied", app, ListKeys, nil, false, "default-deny"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var d Decision
			if tc.k != nil {
				d = s.AuthorizeKey(tc.p, tc.a, *tc.k)
			} else {
				d = s.AuthorizeService(tc.p, tc.a)
			}
			if d.Allowed != tc.allow || d.PolicyID() != tc.policy {
				t.Errorf("decision = %v by %q (errors %v), want %v by %q", d.Allowed, d.PolicyID(), d.Errors, tc.allow, tc.policy)
			}
		})
	}
}

func TestSchemaBoundsLoosePolicies(t *testing.T) {
	s, err := Parse(map[string][]byte{"loose.cedar": []byte(`permit (principal is Client, action, resource);`)})
	if err != nil {
		t.Fatal(err)
	}
	c := Principal{Kind: KindClient, Name: "app"}
	k := Key{Name: "k"}
	if d := s.AuthorizeKey(c, Encrypt, k); !d.Allowed {
		t.Errorf("loose client policy denies Encrypt: %+v", d)
	}
	for _, a := range []Action{CreateKey, RotateKey, DisableKey, ScheduleKeyDeletion, HoldMaterial} {
		if d := s.AuthorizeKey(c, a, k); d.Allowed || d.PolicyID() != "schema" {
			t.Errorf("loose client policy: %s = %v by %q, want denied by the schema", a, d.Allowed, d.PolicyID())
		}
	}
	if d := s.AuthorizeService(c, ListNodes); d.Allowed {
		t.Error("a client may ListNodes")
	}
}

func TestEmptySetDeniesEverything(t *testing.T) {
	s, err := Parse(map[string][]byte{"empty.cedar": []byte("// nothing\n")})
	if err != nil {
		t.Fatal(err)
	}
	if d := s.AuthorizeKey(Principal{Kind: KindAdmin, Name: "root"}, CreateKey, Key{Name: "k"}); d.Allowed {
		t.Error("empty policy set allowed an operation")
	}
}

func TestLoadErrors(t *testing.T) {
	for _, tc := range []struct {
		name, src, want string
	}{
		{"syntax", "permit (principal, action, resource)\nwhen { resource.x == };", "bad.cedar:2:"},
		{"unknown action", "\n\npermit (principal, action == Action::\"Encryptt\", resource);", "bad.cedar:3:1: for policy"},
		{"misspelt attribute", "permit (principal is Client, action, resource) when { principal.trust_domian == \"x\" };", "trust_domian"},
		{"unguarded tag", "permit (principal is Edge, action == Action::\"HoldMaterial\", resource is Key) when { resource.getTag(\"region\") == principal.region };", "tag"},
		{"edge encrypt", "permit (principal is Edge, action == Action::\"Encrypt\", resource);", "bad.cedar:1:1"},
		{"duplicate id", "@id(\"a\") permit (principal, action, resource);\n@id(\"a\") forbid (principal, action, resource);", "duplicate policy id"},
		{"unknown entity type", "permit (principal is User, action, resource);", "bad.cedar:1:1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse(map[string][]byte{"bad.cedar": []byte(tc.src)})
			var le *LoadError
			if !errors.As(err, &le) {
				t.Fatalf("Parse = %v, want a LoadError", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Parse error = %q, want it to contain %q", err, tc.want)
			}
			if le.File != "bad.cedar" || le.Line < 1 || le.Column < 1 {
				t.Errorf("LoadError = %+v, want file, line and column", le)
			}
		})
	}
}

func TestEngineReloadKeepsOldOnError(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "main.cedar")
	write := func(s string) {
		if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(`permit (principal is Admin, action, resource);`)
	e, err := NewEngine(dir)
	if err != nil {
		t.Fatal(err)
	}
	admin := Principal{Kind: KindAdmin, Name: "ops"}
	client := Principal{Kind: KindClient, Name: "app"}
	first := e.Current().Hash()

	write(`permit (principal is Admin, action, resource); permit (principal is Client, action == Action::"Encrypt", resource);`)
	if changed, err := e.Reload(); err != nil || !changed {
		t.Fatalf("Reload = %v, %v; want changed", changed, err)
	}
	if !e.Current().AuthorizeKey(client, Encrypt, Key{Name: "k"}).Allowed {
		t.Error("new policy not in force after reload")
	}

	write(`permit (principal is Admin, action, resource) when { principal.nope };`)
	if _, err := e.Reload(); err == nil || !strings.Contains(err.Error(), "main.cedar:1:1") {
		t.Fatalf("Reload of a bad policy = %v, want an error naming main.cedar:1:1", err)
	}
	if e.LastError() == nil {
		t.Error("LastError() = nil after a failed reload")
	}
	if !e.Current().AuthorizeKey(client, Encrypt, Key{Name: "k"}).Allowed || !e.Current().AuthorizeKey(admin, RotateKey, Key{Name: "k"}).Allowed {
		t.Error("a failed reload changed the policy in force")
	}
	if e.Current().Hash() == first {
		t.Error("hash did not change with the content")
	}
	if changed, err := e.Reload(); err == nil || changed {
		t.Errorf("Reload again = %v, %v", changed, err)
	}
	write(`permit (principal is Admin, action, resource); permit (principal is Client, action == Action::"Encrypt", resource);`)
	if changed, err := e.Reload(); err != nil || changed {
		t.Errorf("Reload to identical content = %v, %v; want unchanged", changed, err)
	}
	if e.LastError() != nil {
		t.Errorf("LastError() = %v after a good reload", e.LastError())
	}
	if r, f := e.Stats(); r != 2 || f != 2 {
		t.Errorf("Stats = %d reloads, %d failures; want 2, 2", r, f)
	}
}

func TestLoadFilesErrors(t *testing.T) {
	dir := t.TempDir()
	if _, err := LoadFiles(dir); err == nil || !strings.Contains(err.Error(), "no *.cedar files") {
		t.Errorf("LoadFiles(empty dir) = %v", err)
	}
	if _, err := LoadFiles(filepath.Join(dir, "missing.cedar")); err == nil {
		t.Error("LoadFiles(missing) succeeded")
	}
	if _, err := LoadFiles(); err == nil {
		t.Error("LoadFiles() succeeded")
	}
}

// FuzzParse checks the policy loader on any document: no panic; every
// refusal is a list of *LoadErrors naming the file; and a set it accepts
// counts its policies, reloads from its own Documents to the same hash
// (what an edge does with the replicated policy), and decides every
// request the same way both times, with Cedar's semantics: an allow names
// only permits, a denial by policy names only forbids.
func FuzzParse(f *testing.F) {
	f.Add(demo)
	f.Add("permit (principal, action, resource);")
	f.Add("forbid (principal is Client, action, resource) when { principal.getTag(\"x\") };")
	f.Add(`@id("a") permit (principal, action, resource); @id("a") forbid (principal, action, resource);`)
	f.Add(`permit (principal is Admin, action == Action::"CreateKey", resource) when { context.nope };`)
	f.Add(`permit (principal == Client::"c", action in [Action::"Encrypt"], resource is Key) when { resource.type == "aes-256-gcm" && 1 + 9223372036854775807 > 0 };`)
	f.Fuzz(func(t *testing.T, src string) {
		s, err := Parse(map[string][]byte{"f.cedar": []byte(src)})
		if err != nil {
			errs := []error{err}
			if j, ok := err.(interface{ Unwrap() []error }); ok {
				errs = j.Unwrap()
			}
			for _, e := range errs {
				var le *LoadError
				if !errors.As(e, &le) || le.File != "f.cedar" {
					t.Fatalf("Parse error %v (%T) is not a LoadError naming the file", e, e)
				}
			}
			return
		}
		if s.Len() != len(s.effects) || len(s.Hash()) != 64 {
			t.Fatalf("set of %d policies records %d effects, hash %q", s.Len(), len(s.effects), s.Hash())
		}
		again, err := Parse(s.Documents())
		if err != nil || again.Hash() != s.Hash() || again.Len() != s.Len() {
			t.Fatalf("the set does not reload from its documents: %v", err)
		}
		principals := []Principal{
			{Kind: KindClient, Name: "c", TrustDomain: "kb.test", Labels: map[string]string{"a": "b", "x": "y"}},
			{Kind: KindAdmin, Name: "ops", TrustDomain: "kb.test"},
			{Kind: KindEdge, Name: "e", TrustDomain: "kb.test", Region: "eu", Labels: map[string]string{"a": "b"}},
		}
		key := Key{Name: "k", Type: "aes-256-gcm", Mode: "derive", Labels: map[string]string{"a": "b"}}
		for _, p := range principals {
			for _, a := range []Action{Encrypt, Sign, HoldMaterial, CreateKey} {
				d := s.AuthorizeKey(p, a, key)
				checkDecision(t, s, d)
				// Cedar reports the deciding policies in no fixed order.
				if d2 := again.AuthorizeKey(p, a, key); d2.Allowed != d.Allowed || !slices.Equal(slices.Sorted(slices.Values(d2.Policies)), slices.Sorted(slices.Values(d.Policies))) {
					t.Fatalf("the reloaded set decides %s %s otherwise: %+v, %+v", p.Name, a, d, d2)
				}
			}
			checkDecision(t, s, s.AuthorizeService(p, ListNodes))
		}
	})
}

// checkDecision checks a decision against Cedar's semantics: an allow is
// made by permits, a denial names forbids (or nothing, or the schema).
func checkDecision(t *testing.T, s *Set, d Decision) {
	t.Helper()
	for _, id := range d.Policies {
		if id == "schema" && !d.Allowed && len(d.Policies) == 1 {
			continue
		}
		eff, ok := s.effects[cedar.PolicyID(id)]
		if !ok {
			t.Fatalf("decision %+v names policy %q, which the set does not hold", d, id)
		}
		if d.Allowed != (eff == cedar.Permit) {
			t.Fatalf("decision %+v (allowed %v) is made by %q, a %v", d, d.Allowed, id, eff)
		}
	}
	if d.Allowed && len(d.Policies) == 0 {
		t.Fatalf("allowed with no permit: %+v", d)
	}
}

// TestDecidingPoliciesSorted: when several policies decide, the audit
// names them in one order, whatever order Cedar reports them in.
func TestDecidingPoliciesSorted(t *testing.T) {
	s, err := Parse(map[string][]byte{"p.cedar": []byte(`
@id("b-second") permit (principal == Client::"app", action == Action::"Encrypt", resource);
@id("a-first") permit (principal == Client::"app", action == Action::"Encrypt", resource);
@id("c-third") permit (principal, action == Action::"Encrypt", resource);
`)})
	if err != nil {
		t.Fatal(err)
	}
	app := Principal{Kind: KindClient, Name: "app", TrustDomain: "kb.test"}
	for range 50 {
		if d := s.AuthorizeKey(app, Encrypt, Key{Name: "k", Type: "aes-256-gcm", Mode: "derive"}); d.PolicyID() != "a-first,b-second,c-third" {
			t.Fatalf("policy id %q, want a-first,b-second,c-third", d.PolicyID())
		}
	}
}
