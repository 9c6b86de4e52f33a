package managed

import (
	"regexp"
	"strings"

	"github.com/keybroker/keybroker/internal/clip"
)

// MaxAliases bounds a key's named aliases (AWS KMS's quota is 50 per key
// too): they travel in the key's record to every edge.
const MaxAliases = 50

var aliasRe = regexp.MustCompile(`^[A-Za-z0-9/_-]{1,250}$`)

// ValidateAlias checks a named alias: the name after AWS's "alias/", 1 to
// 250 of [A-Za-z0-9/_-] as AWS KMS allows, not in AWS's reserved aws/
// namespace. An alias names one key tier-wide; the central tier keeps
// which (a store record of its own, created with compare-and-swap), and
// the key lists its aliases (Key.Aliases) so that edges resolve them.
func ValidateAlias(name string) error {
	switch {
	case !aliasRe.MatchString(name):
		return Errorf(ErrInvalidArgument, "alias %s must be alias/ and 1-250 of [A-Za-z0-9/_-]", clip.Quote(name))
	case name == "aws" || strings.HasPrefix(name, "aws/"):
		return Errorf(ErrInvalidArgument, "alias/%s is in AWS's reserved alias/aws/ namespace", name)
	}
	return nil
}

// validateAliases checks a key's alias list.
func validateAliases(aliases []string) error {
	if len(aliases) > MaxAliases {
		return Errorf(ErrInvalidArgument, "%d aliases, limit %d", len(aliases), MaxAliases)
	}
	seen := make(map[string]bool, len(aliases))
	for _, a := range aliases {
		if err := ValidateAlias(a); err != nil {
			return err
		}
		if seen[a] {
			return Errorf(ErrInvalidArgument, "alias %s is listed twice", clip.Quote(a))
		}
		seen[a] = true
	}
	return nil
}
