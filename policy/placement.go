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
// It becomes one policy,
//
//	@id("placement:<key>")
//	permit (principal is Edge, action == Action::"HoldMaterial", resource == Key::"<key>")
//	when { <expression> };
//
// evaluated together with the global policies for HoldMaterial, so a
// global forbid still wins. The expression is validated against the schema
// like any policy, and must parse to exactly that one policy: it cannot
// close the condition and add policies of its own.

func placementPolicy(keyID, expr string) string {
	return fmt.Sprintf("@id(%q)\npermit (principal is Edge, action == Action::\"HoldMaterial\", resource == Key::%q)\nwhen { %s };\n",
		"placement:"+keyID, keyID, expr)
}

// compilePlacement parses and validates a placement expression.
func compilePlacement(keyID, expr string) (*cedar.Policy, error) {
	if strings.TrimSpace(expr) == "" {
		return nil, fmt.Errorf("placement: empty expression")
	}
	if len(expr) > MaxPlacement {
		return nil, fmt.Errorf("placement: expression is %d bytes, limit %d", len(expr), MaxPlacement)
	}
	list, err := cedar.NewPolicyListFromBytes("placement", []byte(placementPolicy(keyID, expr)))
	if err != nil {
		le := parseError("placement", err).(*LoadError)
		return nil, fmt.Errorf("placement: %s", le.Msg)
	}
	if len(list) != 1 {
		return nil, fmt.Errorf("placement: the expression must be one condition, not %d policies", len(list))
	}
	v, err := validator()
	if err != nil {
		return nil, err
	}
	if err := v.Policy("placement", (*xast.Policy)(list[0].AST())); err != nil {
		return nil, fmt.Errorf("placement: %s", strings.ReplaceAll(err.Error(), "\n", "; "))
	}
	return list[0], nil
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
	p, err := compilePlacement(keyID, expr)
	if err != nil {
		return nil, err
	}
	ps := cedar.NewPolicySet()
	for id, pol := range s.ps.All() {
		ps.Add(id, pol)
	}
	ps.Add(cedar.PolicyID("placement:"+keyID), p)
	if s.placements.m == nil || len(s.placements.m) >= maxPlacementSets {
		s.placements.m = map[string]*cedar.PolicySet{}
	}
	s.placements.m[cacheKey] = ps
	return ps, nil
}

// AuthorizeHoldMaterial decides whether an edge may hold a key's material:
// the global policies and the key's placement expression (if any) together,
// a forbid in either winning. An invalid stored expression denies.
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
