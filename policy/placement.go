package policy

import (
	"fmt"
	"strings"
	"sync"

	"github.com/cedar-policy/cedar-go"
	xast "github.com/cedar-policy/cedar-go/x/exp/ast"
)

// MaxPlacement bounds a placement expression's length.
const MaxPlacement = 2048

// A key's placement expression is a Cedar condition over the edge asking to
// hold the key's material (principal, an Edge with trust_domain, region and
// label tags) and the key (resource), for example
//
//	principal.region == "eu"
//	principal.hasTag("pci") && principal.getTag("pci") == "yes"
//
// It decides HoldMaterial for its key in both directions, so that a key
// can be confined to some edges under a global policy that lets every
// edge hold every key. It becomes two policies,
//
//	@id("placement:<key>")
//	permit (principal is Edge, action == Action::"HoldMaterial", resource == Key::"<key>")
//	when { <expression> };
//	@id("placement:<key>:outside")
//	forbid (principal is Edge, action == Action::"HoldMaterial", resource == Key::"<key>")
//	unless { <expression> };
//
// evaluated together with the global policies for HoldMaterial, so a
// global forbid still wins and a global permit cannot reach past the
// expression. The expression is validated against the schema like any
// policy, and each policy must parse to exactly one: the expression cannot
// close the condition and add policies of its own.

func placementPolicy(effect, keyID, expr string) string {
	id, cond := "placement:"+keyID, "when"
	if effect == "forbid" {
		id, cond = id+":outside", "unless"
	}
	return fmt.Sprintf("@id(%q)\n%s (principal is Edge, action == Action::\"HoldMaterial\", resource == Key::%q)\n%s { %s };\n",
		id, effect, keyID, cond, expr)
}

// placementIDs are the ids of a key's placement policies.
func placementIDs(keyID string) [2]cedar.PolicyID {
	return [2]cedar.PolicyID{cedar.PolicyID("placement:" + keyID), cedar.PolicyID("placement:" + keyID + ":outside")}
}

// compilePlacement parses and validates a placement expression into its
// permit and its forbid.
func compilePlacement(keyID, expr string) ([2]*cedar.Policy, error) {
	var out [2]*cedar.Policy
	if strings.TrimSpace(expr) == "" {
		return out, fmt.Errorf("placement: empty expression")
	}
	if len(expr) > MaxPlacement {
		return out, fmt.Errorf("placement: expression is %d bytes, limit %d", len(expr), MaxPlacement)
	}
	v, err := validator()
	if err != nil {
		return out, err
	}
	for i, effect := range []string{"permit", "forbid"} {
		list, err := cedar.NewPolicyListFromBytes("placement", []byte(placementPolicy(effect, keyID, expr)))
		if err != nil {
			le := parseError("placement", err).(*LoadError)
			return out, fmt.Errorf("placement: %s", le.Msg)
		}
		if len(list) != 1 {
			return out, fmt.Errorf("placement: the expression must be one condition, not %d policies", len(list))
		}
		// The expression is pasted between braces: it must not close them
		// and add a condition of its own ("… } when { false" would switch
		// both policies off, leaving the global policies to place the key
		// anywhere).
		if ast := (*xast.Policy)(list[0].AST()); len(ast.Conditions) != 1 || len(ast.Annotations) != 1 {
			return out, fmt.Errorf("placement: the expression must be one condition, not %d conditions", len(ast.Conditions))
		}
		if err := v.Policy("placement", (*xast.Policy)(list[0].AST())); err != nil {
			return out, fmt.Errorf("placement: %s", strings.ReplaceAll(err.Error(), "\n", "; "))
		}
		out[i] = list[0]
	}
	return out, nil
}

// ValidatePlacement checks a key's placement expression.
func ValidatePlacement(keyID, expr string) error {
	_, err := compilePlacement(keyID, expr)
	return err
}

// placementSets caches, per Set, the policy set extended with one key's
// placement policy.
type placementSets struct {
	mu sync.Mutex
	m  map[string]*cedar.PolicySet
}

const maxPlacementSets = 10_000

func (s *Set) withPlacement(keyID, expr string) (*cedar.PolicySet, error) {
	s.placements.mu.Lock()
	defer s.placements.mu.Unlock()
	cacheKey := keyID + "\x00" + expr
	if ps, ok := s.placements.m[cacheKey]; ok {
		return ps, nil
	}
	pols, err := compilePlacement(keyID, expr)
	if err != nil {
		return nil, err
	}
	ps := cedar.NewPolicySet()
	for id, pol := range s.ps.All() {
		ps.Add(id, pol)
	}
	for i, id := range placementIDs(keyID) {
		ps.Add(id, pols[i])
	}
	if s.placements.m == nil || len(s.placements.m) >= maxPlacementSets {
		s.placements.m = map[string]*cedar.PolicySet{}
	}
	s.placements.m[cacheKey] = ps
	return ps, nil
}

// AuthorizeHoldMaterial decides whether an edge may hold a key's material:
// the global policies alone when the key has no placement expression;
// otherwise the expression, unless a global forbid says no. An invalid
// stored expression denies.
func (s *Set) AuthorizeHoldMaterial(edge Principal, key Key, placement string) Decision {
	if placement == "" {
		return s.AuthorizeKey(edge, HoldMaterial, key)
	}
	ps, err := s.withPlacement(key.Name, placement)
	if err != nil {
		return Decision{Errors: []string{err.Error()}}
	}
	return s.evaluate(ps, edge, HoldMaterial, key)
}
