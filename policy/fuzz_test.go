package policy

import (
	"reflect"
	"strings"
	"testing"

	"github.com/cedar-policy/cedar-go"
	xast "github.com/cedar-policy/cedar-go/x/exp/ast"
)

// FuzzValidatePlacement checks a key's placement expression, which an
// admin writes and Cedar evaluates for every edge: no panic; refusals say
// "placement"; an accepted expression compiles to exactly the two
// policies the package doc shows — annotated with their ids only, scoped
// to Edge principals, HoldMaterial and Key::<the key> whatever the
// expression says, the permit under a when and the forbid under an unless
// — evaluates without panicking for any edge, cannot outvote a global
// forbid, and alone allows only through its own permit.
//
// It does not check that the condition is the only one: an expression can
// close its condition and open another (`... } when { false`), which the
// fuzzing report that added this target describes.
func FuzzValidatePlacement(f *testing.F) {
	for _, s := range []struct{ key, expr string }{
		{"payments", `principal.region == "eu"`},
		{"payments", `principal.hasTag("pci") && principal.getTag("pci") == "yes"`},
		{"billing/invoices:v2", `resource.hasTag("region") && resource.getTag("region") == principal.region`},
		{"k", "true"},
		{"k", `principal.trust_domain like "*.test" || ["eu", "uk"].contains(principal.region)`},
		{"k", `principal.region == "eu" } when { false`},
		{"k", `true }; permit (principal, action, resource) when { true`},
		{"k", `principal.getTag("pci") == "yes"`},
		{"k", `principal.nope`},
		{"k", "  "},
		{"k\"", "true"},
		{"k", strings.Repeat("true && ", 300) + "true"},
	} {
		f.Add(s.key, s.expr)
	}
	global := func(src string) *Set {
		s, err := Parse(map[string][]byte{"g.cedar": []byte(src)})
		if err != nil {
			f.Fatal(err)
		}
		return s
	}
	permitAll := global(`@id("all-edges") permit (principal is Edge, action == Action::"HoldMaterial", resource);`)
	forbidAll := global(`@id("no-edges") forbid (principal is Edge, action == Action::"HoldMaterial", resource);`)
	none := global("")
	edges := []Principal{
		{Kind: KindEdge, Name: "eu-1", TrustDomain: "kb.test", Region: "eu", Labels: map[string]string{"pci": "yes"}},
		{Kind: KindEdge, Name: "us-1", TrustDomain: "other.test", Region: "us"},
	}
	f.Fuzz(func(t *testing.T, keyID, expr string) {
		pols, err := compilePlacement(keyID, expr)
		if verr := ValidatePlacement(keyID, expr); (verr == nil) != (err == nil) {
			t.Fatalf("ValidatePlacement = %v, compilePlacement = %v", verr, err)
		}
		if err != nil {
			if !strings.HasPrefix(err.Error(), "placement") {
				t.Fatalf("error %q does not say placement", err)
			}
			return
		}
		ids := placementIDs(keyID)
		for i, want := range []struct {
			effect    xast.Effect
			condition xast.Condition
		}{{xast.EffectPermit, xast.ConditionWhen}, {xast.EffectForbid, xast.ConditionUnless}} {
			p := (*xast.Policy)(pols[i].AST())
			if p.Effect != want.effect || len(p.Conditions) == 0 || p.Conditions[0].Condition != want.condition {
				t.Fatalf("policy %d: effect %v, conditions %+v", i, p.Effect, p.Conditions)
			}
			if len(p.Annotations) != 1 || p.Annotations[0].Key != "id" || string(p.Annotations[0].Value) != string(ids[i]) {
				t.Fatalf("policy %d: annotations %+v, want only @id(%q)", i, p.Annotations, ids[i])
			}
			if !reflect.DeepEqual(p.Principal, xast.ScopeTypeIs{Type: "Edge"}) ||
				!reflect.DeepEqual(p.Action, xast.ScopeTypeEq{Entity: cedar.NewEntityUID("Action", "HoldMaterial")}) ||
				!reflect.DeepEqual(p.Resource, xast.ScopeTypeEq{Entity: cedar.NewEntityUID("Key", cedar.String(keyID))}) {
				t.Fatalf("policy %d is scoped to %#v, %#v, %#v; want Edge, HoldMaterial, Key::%q", i, p.Principal, p.Action, p.Resource, keyID)
			}
		}
		key := Key{Name: keyID, Type: "aes-256-gcm", Mode: "derive", Labels: map[string]string{"region": "eu"}}
		for _, e := range edges {
			permitAll.AuthorizeHoldMaterial(e, key, expr)
			if d := forbidAll.AuthorizeHoldMaterial(e, key, expr); d.Allowed {
				t.Fatalf("placement %q outvoted a global forbid for %s: %+v", expr, e.Name, d)
			}
			if d := none.AuthorizeHoldMaterial(e, key, expr); d.Allowed && (len(d.Policies) != 1 || d.Policies[0] != string(ids[0])) {
				t.Fatalf("placement %q alone allowed %s through %v, not its permit", expr, e.Name, d.Policies)
			}
		}
	})
}
