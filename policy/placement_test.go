package policy

import (
	"strings"
	"testing"
)

func TestPlacement(t *testing.T) {
	s, err := Parse(map[string][]byte{"p.cedar": []byte(`
@id("no-quarantined-edges")
forbid (principal is Edge, action == Action::"HoldMaterial", resource)
when { principal.hasTag("quarantine") };
`)})
	if err != nil {
		t.Fatal(err)
	}
	key := Key{Name: "payments", Type: "aes-256-gcm", Mode: "derive"}
	eu := Principal{Kind: KindEdge, Name: "edge-eu-1", Region: "eu"}
	us := Principal{Kind: KindEdge, Name: "edge-us-1", Region: "us"}
	bad := Principal{Kind: KindEdge, Name: "edge-eu-2", Region: "eu", Labels: map[string]string{"quarantine": "yes"}}
	const place = `principal.region == "eu"`
	for _, tc := range []struct {
		name   string
		p      Principal
		k      Key
		expr   string
		allow  bool
		policy string
	}{
		{"eu edge, eu placement", eu, key, place, true, "placement:payments"},
		{"us edge, eu placement", us, key, place, false, "placement:payments:outside"},
		{"forbid beats placement", bad, key, place, false, "no-quarantined-edges"},
		{"no placement: global default deny", eu, key, "", false, "default-deny"},
		{"placement of another key does not apply", eu, Key{Name: "other"}, "", false, "default-deny"},
		{"tag-based placement", Principal{Kind: KindEdge, Name: "e", Labels: map[string]string{"pci": "yes"}}, key,
			`principal.hasTag("pci") && principal.getTag("pci") == "yes"`, true, "placement:payments"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := s.AuthorizeHoldMaterial(tc.p, tc.k, tc.expr)
			if d.Allowed != tc.allow || d.PolicyID() != tc.policy {
				t.Errorf("AuthorizeHoldMaterial = %v by %q (%v), want %v by %q", d.Allowed, d.PolicyID(), d.Errors, tc.allow, tc.policy)
			}
		})
	}
	// Under a global policy letting every edge hold every key, a placement
	// still confines its key.
	open, err := Parse(map[string][]byte{"p.cedar": []byte(`
@id("edges-hold-material")
permit (principal is Edge, action == Action::"HoldMaterial", resource is Key);
`)})
	if err != nil {
		t.Fatal(err)
	}
	if d := open.AuthorizeHoldMaterial(us, key, place); d.Allowed || d.PolicyID() != "placement:payments:outside" {
		t.Errorf("us edge, eu placement, global permit: %v by %q, want denied by the placement", d.Allowed, d.PolicyID())
	}
	if d := open.AuthorizeHoldMaterial(us, key, ""); !d.Allowed {
		t.Errorf("us edge, no placement, global permit: denied by %q", d.PolicyID())
	}
	if d := open.AuthorizeHoldMaterial(eu, key, place); !d.Allowed {
		t.Errorf("eu edge, eu placement, global permit: denied by %q", d.PolicyID())
	}
	// A placement expression grants HoldMaterial only, and only to edges.
	if d := s.AuthorizeKey(Principal{Kind: KindClient, Name: "c"}, Encrypt, key); d.Allowed {
		t.Error("placement leaked into another action")
	}
}

func TestValidatePlacement(t *testing.T) {
	for _, tc := range []struct{ expr, want string }{
		{`principal.region == "eu"`, ""},
		{`principal.region in ["eu", "uk"]`, `write ["eu", "uk"].contains(principal.region)`},
		{``, "empty"},
		{`principal.regoin == "eu"`, "regoin"},
		{`principal.region ==`, `placement "principal.region ==": line 1, column 20: expected an expression after "=="`},
		{`true }; permit (principal, action, resource) when { true`, "one condition"},
		{`true }; @id("x") permit (principal, action, resource`, "placement "},
		{`principal.region == "eu" } when { false`, "one condition, not 2 conditions"},
		{`principal.region == "eu" } unless { true`, "one condition, not 2 conditions"},
		{`principal.getTag("x") == "y"`, "tag"},
		{strings.Repeat("a", MaxPlacement+1), "limit"},
	} {
		err := ValidatePlacement("k", tc.expr)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("ValidatePlacement(%q) = %v, want nil", tc.expr, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("ValidatePlacement(%q) = %v, want an error containing %q", tc.expr, err, tc.want)
		}
	}
}

// TestPlacementSyntaxError checks that a malformed placement is reported
// in the user's words: their expression quoted, the line and column in it
// (not in the policy it is pasted into), and what was expected — never
// the generated `";"` or Cedar's "invalid primary".
func TestPlacementSyntaxError(t *testing.T) {
	for _, tc := range []struct{ expr, want string }{
		{`principal.region == "eu" &&`,
			`placement "principal.region == \"eu\" &&": line 1, column 28: expected an expression after "&&"`},
		{"principal.region == \"eu\" &&\n  ",
			`line 1, column 28: expected an expression after "&&"`},
		{"principal.region == \"eu\" ||\n  principal.region ==",
			`line 2, column 22: expected an expression after "=="`},
		{`(principal.region == "eu"`,
			`line 1, column 26: expected ")" after "\"eu\""`},
		{`principal.region = "eu"`,
			`line 1, column 18: expected an operator or the end of the placement, found "="`},
		{`principal.region == 'eu'`,
			`line 1, column 21: expected an expression, found "'" (strings take double quotes)`},
		{`&& principal.region == "eu"`,
			`line 1, column 1: expected an expression, found "&&"`},
		{`principal.`,
			`line 1, column 11: expected an attribute name after "principal."`},
		{`principal.region == "eu`,
			`line 1, column 21: string not closed`},
		{`principal.regoin == "eu"`,
			`placement "principal.regoin == \"eu\"": attribute ` + "`regoin`" + ` on entity type ` + "`Edge`" + ` not found`},
		{`principal.region in ["eu"]`,
			`expected a set of entities, or an entity but saw Set<String>`},
		{strings.Repeat(" ", 100) + "&& true",
			`placement "` + strings.Repeat(" ", 79) + `"…: line 1, column 101: expected an expression, found "&&"`},
	} {
		err := ValidatePlacement("k", tc.expr)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ValidatePlacement(%q) = %v, want an error containing %q", tc.expr, err, tc.want)
			continue
		}
		for _, leak := range []string{`";"`, "invalid primary", "exact got", "<input>", "when {", "unless {", "for policy", "__cedar"} {
			if strings.Contains(err.Error(), leak) {
				t.Errorf("ValidatePlacement(%q) = %v: names %q, which the user never wrote", tc.expr, err, leak)
			}
		}
	}
}
