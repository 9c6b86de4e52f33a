package policy

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"unicode"
	"unicode/utf8"

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
			return out, placementSyntaxError(expr, effect, err)
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
			return out, placementTypeError(expr, err)
		}
		out[i] = list[0]
	}
	return out, nil
}

// placementSyntaxError turns Cedar's parse error about the policy a
// placement expression was pasted into into one about the expression the
// user wrote: it quotes the expression, gives the line and column in it
// (in characters, from 1), and says what was expected in words rather
// than naming text the user never wrote (the generated " };" after the
// expression, or the parser's own terms).
func placementSyntaxError(expr, effect string, err error) error {
	le := parseError("placement", err).(*LoadError)
	tok, msg := "", le.Msg
	if strings.HasPrefix(msg, `"`) {
		if q, qerr := strconv.QuotedPrefix(msg); qerr == nil {
			tok, _ = strconv.Unquote(q)
			msg = strings.TrimPrefix(strings.TrimPrefix(msg[len(q):], ":"), " ")
		}
	}
	// The expression starts on line 3 of the generated policy, after
	// "when { " or "unless { " (see placementPolicy).
	prefix := "when { "
	if effect == "forbid" {
		prefix = "unless { "
	}
	line, col := le.Line-2, le.Column
	if line == 1 {
		col -= utf8.RuneCountInString(prefix)
	}
	if le.Line == 0 || line < 1 || col < 1 {
		// Not in the expression (the key id's line, or no position).
		return fmt.Errorf("placement %s: %s", quotePlacement(expr), msg)
	}
	lines := strings.Split(expr, "\n")
	// A position past the end of what the user wrote (on the generated
	// " };", or on trailing blanks) means the expression ended early:
	// point just after its last character.
	trimmed := strings.TrimRightFunc(expr, unicode.IsSpace)
	tl := strings.Split(trimmed, "\n")
	endLine, endCol := len(tl), utf8.RuneCountInString(tl[len(tl)-1])+1
	atEnd := line > endLine || (line == endLine && col >= endCol)
	if atEnd {
		line, col = endLine, endCol
	}
	last := lastToken(trimmed)
	var what string
	switch {
	case msg == "invalid primary" && atEnd:
		what = fmt.Sprintf("expected an expression after %q", last)
	case msg == "invalid primary":
		// Cedar names the token after the one it could not use.
		var found string
		col, found = tokenBefore(lines[line-1], col, "")
		what = fmt.Sprintf("expected an expression, found %q", found)
		if found == "'" {
			what += " (strings take double quotes)"
		}
	case strings.HasPrefix(msg, "exact got "):
		var got, want string
		fmt.Sscanf(msg, "exact got %s want %s", &got, &want)
		// "}" and ";" close the generated policy: to the user they are
		// the end of the expression.
		expected := strconv.Quote(want)
		if want == "}" || want == ";" {
			expected = "an operator or the end of the placement"
		}
		if atEnd {
			what = fmt.Sprintf("expected %s after %q", expected, last)
		} else {
			col, _ = tokenBefore(lines[line-1], col, got)
			what = fmt.Sprintf("expected %s, found %q", expected, got)
		}
	case strings.HasPrefix(msg, "expected ident"):
		what = "expected an attribute name"
		if atEnd {
			what += fmt.Sprintf(" after %q", last)
		} else if tok != "" {
			what += fmt.Sprintf(", found %q", tok)
		}
	case msg == "literal not terminated":
		what = "string not closed: expected a closing \""
	case atEnd:
		what = fmt.Sprintf("unexpected end after %q (%s)", last, msg)
	case tok != "":
		what = fmt.Sprintf("unexpected %q (%s)", tok, msg)
	default:
		what = msg
	}
	return fmt.Errorf("placement %s: line %d, column %d: %s", quotePlacement(expr), line, col, what)
}

// placementTypeError words the schema validator's complaint about an
// expression for the user: their expression quoted, without the name of
// the generated policy or Cedar's internal type names.
func placementTypeError(expr string, err error) error {
	var msgs []string
	for m := range strings.SplitSeq(err.Error(), "\n") {
		m = strings.TrimPrefix(strings.TrimSpace(m), "for policy `placement`, ")
		if m != "" && !slices.Contains(msgs, m) {
			msgs = append(msgs, m)
		}
	}
	msg := strings.NewReplacer("Set<__cedar::internal::AnyEntity>", "a set of entities",
		"__cedar::internal::AnyEntity", "an entity").Replace(strings.Join(msgs, "; "))
	if strings.Contains(msg, "expected an entity") && strings.Contains(expr, " in ") {
		msg += ` ("in" tests entity membership; for a value in a list write ["eu", "uk"].contains(principal.region))`
	}
	return fmt.Errorf("placement %s: %s", quotePlacement(expr), msg)
}

// quotePlacement quotes an expression for an error, shortened when long.
func quotePlacement(expr string) string {
	const max = 80
	if r := []rune(expr); len(r) > max {
		return strconv.Quote(string(r[:max-1])) + "…"
	}
	return strconv.Quote(expr)
}

// tokenBefore finds the token before column col (from 1) of line: the
// last occurrence of want if want is not empty, else the last run of
// non-blank characters. It returns the token's column and text, or col
// and "" if there is none on the line.
func tokenBefore(line string, col int, want string) (int, string) {
	r := []rune(line)
	if col-1 > len(r) {
		col = len(r) + 1
	}
	before := string(r[:col-1])
	if want != "" {
		if i := strings.LastIndex(before, want); i >= 0 {
			return utf8.RuneCountInString(before[:i]) + 1, want
		}
		return col, want
	}
	end := strings.TrimRightFunc(before, unicode.IsSpace)
	start := strings.LastIndexFunc(end, unicode.IsSpace) + 1
	if start >= len(end) {
		return col, ""
	}
	return utf8.RuneCountInString(end[:start]) + 1, end[start:]
}

// lastToken is the last run of non-blank characters of s (at most 20),
// enough to name what an expression that ended early ended on.
func lastToken(s string) string {
	f := strings.Fields(s)
	if len(f) == 0 {
		return ""
	}
	r := []rune(f[len(f)-1])
	if len(r) > 20 {
		r = r[len(r)-20:]
	}
	return string(r)
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
