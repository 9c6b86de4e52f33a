package awsjson

import (
	"context"
	"fmt"
	"net/http"
	"strings"

	"github.com/keybroker/keybroker/managed"
	"github.com/keybroker/keybroker/pipeline"
)

// Aliases. alias/<name> (or its ARN) names the key a named alias of that
// name points at (CreateAlias; pipeline.ResolveAlias: the central tier's
// alias records, or an edge's replica), and otherwise key <name>: every
// keybroker key is also alias/<its id>, and a named alias cannot take the
// name of an existing key.

// aliasName is the name an alias/… KeyId or alias ARN gives (ok false for
// a key id or key ARN); an ARN of another region or account is
// NotFoundException, as keyID answers.
func (s *Server) aliasName(name string) (string, bool, error) {
	if rest, ok := strings.CutPrefix(name, "arn:"); ok {
		parts := strings.SplitN(rest, ":", 5)
		if len(parts) != 5 || !strings.HasPrefix(parts[4], "alias/") {
			return "", false, nil
		}
		if parts[0] != "aws" || parts[1] != "kms" || parts[2] != s.cfg.Region || parts[3] != s.cfg.Account {
			_, err := s.keyID(name)
			return "", false, err
		}
		name = parts[4]
	}
	a, ok := strings.CutPrefix(name, "alias/")
	return a, ok, nil
}

// resolveKey is the keybroker key a KeyId names: a named alias's key when
// it is alias/<name> of one, else keyID's answer.
func (s *Server) resolveKey(ctx context.Context, name string) (string, error) {
	a, ok, err := s.aliasName(name)
	if err != nil {
		return "", err
	}
	if ok {
		id, found, err := s.cfg.Pipeline.ResolveAlias(ctx, a)
		if err != nil {
			return "", err
		}
		if found {
			return id, nil
		}
	}
	return s.keyID(name)
}

// newAliasName is the name a CreateAlias, UpdateAlias or DeleteAlias
// request's AliasName gives: alias/ and a name ValidateAlias accepts
// (InvalidAliasNameException otherwise, as AWS answers; alias/aws/ is
// AWS managed keys').
func newAliasName(aliasName string) (string, error) {
	a, ok := strings.CutPrefix(aliasName, "alias/")
	if !ok {
		return "", invalidAlias("AliasName %s must begin with alias/", clipText(aliasName))
	}
	if err := managed.ValidateAlias(a); err != nil {
		return "", invalidAlias("AliasName %s must be alias/ and 1-250 of [A-Za-z0-9/_-], not in alias/aws/ (AWS managed keys')", clipText(aliasName))
	}
	return a, nil
}

func invalidAlias(format string, args ...any) *Error {
	return &Error{Status: http.StatusBadRequest, Type: "InvalidAliasNameException", Message: fmt.Sprintf(format, args...)}
}

type aliasRequest struct {
	AliasName   string `json:"AliasName"`
	TargetKeyID string `json:"TargetKeyId"`
}

// createAlias gives a named alias to a key: authorized as UpdateKey on it.
// AliasName taken is AlreadyExistsException.
func (s *Server) createAlias(ctx context.Context, caller pipeline.Caller, in *aliasRequest) (any, error) {
	return s.pointAlias(ctx, caller, in, s.cfg.Pipeline.CreateAlias)
}

// updateAlias points a named alias at another key of the same type:
// authorized as UpdateKey on both.
func (s *Server) updateAlias(ctx context.Context, caller pipeline.Caller, in *aliasRequest) (any, error) {
	return s.pointAlias(ctx, caller, in, s.cfg.Pipeline.UpdateAlias)
}

// pointAlias is CreateAlias and UpdateAlias: it resolves the request's
// alias name and target key, then has point (the pipeline's) name the key.
func (s *Server) pointAlias(ctx context.Context, caller pipeline.Caller, in *aliasRequest,
	point func(ctx context.Context, caller pipeline.Caller, name, keyID string) (*managed.Key, error)) (any, error) {
	name, err := newAliasName(in.AliasName)
	if err != nil {
		return nil, err
	}
	if in.TargetKeyID == "" {
		return nil, validation("TargetKeyId is required")
	}
	id, err := s.targetKey(ctx, in.TargetKeyID)
	if err != nil {
		return nil, err
	}
	if _, err := point(ctx, caller, name, id); err != nil {
		return nil, err
	}
	return empty{}, nil
}

// deleteAlias removes a named alias: authorized as UpdateKey on its key.
func (s *Server) deleteAlias(ctx context.Context, caller pipeline.Caller, in *aliasRequest) (any, error) {
	name, err := newAliasName(in.AliasName)
	if err != nil {
		return nil, err
	}
	if _, err := s.cfg.Pipeline.DeleteAlias(ctx, caller, name); err != nil {
		return nil, err
	}
	return empty{}, nil
}

// targetKey is the key a TargetKeyId names: a key id or key ARN, never an
// alias (as AWS requires).
func (s *Server) targetKey(ctx context.Context, name string) (string, error) {
	if _, ok, err := s.aliasName(name); err != nil {
		return "", err
	} else if ok {
		return "", validation("TargetKeyId must be a key id or key ARN, not an alias")
	}
	return s.resolveKey(ctx, name)
}
