// Package policy makes keybroker's authorization and placement decisions
// with Cedar (github.com/cedar-policy/cedar-go).
//
// # Model
//
// Principals are Client, Admin and Edge entities named by their client
// certificate (spiffe://<trust-domain>/<kind>/<name>); their labels are
// Cedar tags. Resources are Key entities — attributes type and mode, the
// managed key's labels as tags — or the Service entity for operations that
// name no key. There is one action per operation, HoldMaterial for
// placement (may this edge hold this key's material), and the admin
// actions. schema.cedarschema is the whole schema.
//
// Cedar's semantics apply: default deny, and a matching forbid wins over
// any permit. On top of them, every request is checked against the schema
// before evaluation: an action applies only to the principal kinds the
// schema names (admin actions to Admin, HoldMaterial to Edge), so no policy,
// however loosely written, can grant a client an admin action.
//
// # Loading
//
// Policies are *.cedar files. Each file is parsed and every policy is
// validated against the schema (strict mode), so an unknown action, a
// misspelt attribute or an unguarded tag access is refused at load, with
// the file, line and column of the offending policy. A policy's id is its
// @id("...") annotation, or file#index. A [Set] is immutable; an [Engine]
// holds the current Set, swaps in a new one on a successful reload and
// keeps the old one (reporting the error) when a reload fails.
package policy

import (
	"bytes"
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/cedar-policy/cedar-go"
	xast "github.com/cedar-policy/cedar-go/x/exp/ast"
	"github.com/cedar-policy/cedar-go/x/exp/schema"
	"github.com/cedar-policy/cedar-go/x/exp/schema/validate"
)

//go:embed schema.cedarschema
var schemaText []byte

var validator = sync.OnceValues(func() (*validate.Validator, error) {
	var s schema.Schema
	s.SetFilename("schema.cedarschema")
	if err := s.UnmarshalCedar(schemaText); err != nil {
		return nil, err
	}
	r, err := s.Resolve()
	if err != nil {
		return nil, err
	}
	return validate.New(r, validate.WithStrict()), nil
})

// Kind is a principal's kind.
type Kind string

// Principal kinds, as in the SPIFFE path.
const (
	KindClient  Kind = "client"
	KindAdmin   Kind = "admin"
	KindEdge    Kind = "edge"
	KindCentral Kind = "central"
)

func (k Kind) entityType() (cedar.EntityType, bool) {
	switch k {
	case KindClient:
		return "Client", true
	case KindAdmin:
		return "Admin", true
	case KindEdge:
		return "Edge", true
	}
	return "", false
}

// Principal is an authenticated caller.
type Principal struct {
	Kind        Kind
	Name        string
	TrustDomain string
	Region      string            // edges only
	Labels      map[string]string // Cedar tags
}

// Key is the resource of a key operation.
type Key struct {
	Name string
	Type string // aes-256-gcm, hmac-sha256, ecdsa-p256, ed25519
	Mode string // derive, wrap, backend
	// Root is the backend key URI of the key's root key (its primary
	// version's); for CreateKey, the root the new key would use.
	Root   string
	Labels map[string]string
}

// Action names an operation.
type Action string

// Actions on keys.
const (
	Encrypt                         Action = "Encrypt"
	Decrypt                         Action = "Decrypt"
	ReEncrypt                       Action = "ReEncrypt"
	GenerateDataKey                 Action = "GenerateDataKey"
	GenerateDataKeyWithoutPlaintext Action = "GenerateDataKeyWithoutPlaintext"
	DecryptDataKey                  Action = "DecryptDataKey"
	Sign                            Action = "Sign"
	Verify                          Action = "Verify"
	GetPublicKey                    Action = "GetPublicKey"
	GenerateMac                     Action = "GenerateMac"
	VerifyMac                       Action = "VerifyMac"
	DescribeKey                     Action = "DescribeKey"
	LookupKey                       Action = "LookupKey"
	HoldMaterial                    Action = "HoldMaterial"
	CreateKey                       Action = "CreateKey"
	RotateKey                       Action = "RotateKey"
	UpdateKey                       Action = "UpdateKey"
	DisableKey                      Action = "DisableKey"
	EnableKey                       Action = "EnableKey"
	ScheduleKeyDeletion             Action = "ScheduleKeyDeletion"
	CancelKeyDeletion               Action = "CancelKeyDeletion"
)

// Actions on the service (no key).
const (
	GenerateRandom Action = "GenerateRandom"
	ListKeys       Action = "ListKeys"
	ListNodes      Action = "ListNodes"
)

// Forward is an edge's right to relay a call to the central tier
// (AuthorizeForward).
const Forward Action = "Forward"

// Decision is the outcome of an authorization.
type Decision struct {
	Allowed bool
	// Policies lists the ids of the policies that decided: the permits that
	// allowed, or the forbids that denied. Empty on a default deny.
	Policies []string
	// Errors lists policies that failed to evaluate (they are skipped, as
	// Cedar specifies).
	Errors []string
}

// PolicyID is the audit form: the deciding policies joined, "default-deny",
// or "schema" for a request the schema does not allow (a principal kind the
// action does not apply to).
func (d Decision) PolicyID() string {
	if len(d.Policies) == 0 {
		if d.Allowed {
			return ""
		}
		return "default-deny"
	}
	return strings.Join(d.Policies, ",")
}

// Set is an immutable, validated set of policies.
type Set struct {
	ps         *cedar.PolicySet
	placements placementSets
	effects    map[cedar.PolicyID]cedar.Effect
	hash       string
	files      []string
	docs       map[string][]byte
	policies   int
}

// Hash identifies the set's content (hex SHA-256 over file names and
// bytes); it is the policy revision replicated to edges.
func (s *Set) Hash() string { return s.hash }

// Len reports the number of policies.
func (s *Set) Len() int { return s.policies }

// Documents returns the policy files' contents by name, so the set can be
// replicated (to edges) and parsed there with Parse.
func (s *Set) Documents() map[string][]byte {
	out := make(map[string][]byte, len(s.docs))
	for n, d := range s.docs {
		out[n] = bytes.Clone(d)
	}
	return out
}

// Files lists the files the set was loaded from.
func (s *Set) Files() []string { return slices.Clone(s.files) }

// LoadError is a policy that failed to parse or validate.
type LoadError struct {
	File   string
	Line   int
	Column int
	Msg    string
}

func (e *LoadError) Error() string {
	return fmt.Sprintf("%s:%d:%d: %s", e.File, e.Line, e.Column, e.Msg)
}

// Parse builds a Set from named documents (file name → Cedar text). All
// errors are returned, joined.
func Parse(docs map[string][]byte) (*Set, error) {
	v, err := validator()
	if err != nil {
		return nil, fmt.Errorf("policy: schema: %w", err)
	}
	names := make([]string, 0, len(docs))
	for n := range docs {
		names = append(names, n)
	}
	sort.Strings(names)
	s := &Set{ps: cedar.NewPolicySet(), effects: map[cedar.PolicyID]cedar.Effect{}, files: names, docs: map[string][]byte{}}
	h := sha256.New()
	var errs []error
	for _, name := range names {
		doc := docs[name]
		fmt.Fprintf(h, "%d:%s\n%d:", len(name), name, len(doc))
		h.Write(doc)
		s.docs[name] = bytes.Clone(doc)
		list, err := cedar.NewPolicyListFromBytes(name, doc)
		if err != nil {
			errs = append(errs, parseError(name, err))
			continue
		}
		for i, p := range list {
			id := cedar.PolicyID(fmt.Sprintf("%s#%d", filepath.Base(name), i))
			if a, ok := p.Annotations()["id"]; ok {
				id = cedar.PolicyID(a)
			}
			pos := p.Position()
			if err := v.Policy(string(id), (*xast.Policy)(p.AST())); err != nil {
				errs = append(errs, &LoadError{File: name, Line: pos.Line, Column: pos.Column, Msg: strings.ReplaceAll(err.Error(), "\n", "; ")})
				continue
			}
			if !s.ps.Add(id, p) {
				errs = append(errs, &LoadError{File: name, Line: pos.Line, Column: pos.Column, Msg: fmt.Sprintf("duplicate policy id %q", id)})
				continue
			}
			s.effects[id] = p.Effect()
			s.policies++
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	s.hash = hex.EncodeToString(h.Sum(nil))
	return s, nil
}

// parseError turns cedar-go's "parse error at <input>:L:C ..." into a
// LoadError naming the file.
func parseError(file string, err error) error {
	msg := err.Error()
	var line, col int
	if i := strings.Index(msg, "<input>:"); i >= 0 {
		rest := msg[i+len("<input>:"):]
		if _, scanErr := fmt.Sscanf(rest, "%d:%d", &line, &col); scanErr == nil {
			if j := strings.IndexByte(rest, ' '); j >= 0 {
				msg = strings.TrimSpace(rest[j:])
			}
		}
	}
	msg = strings.TrimPrefix(msg, "parser error: ")
	return &LoadError{File: file, Line: line, Column: col, Msg: msg}
}

// LoadFiles reads and parses the given files; a directory contributes its
// *.cedar files.
func LoadFiles(paths ...string) (*Set, error) {
	docs := map[string][]byte{}
	for _, p := range paths {
		st, err := os.Stat(p)
		if err != nil {
			return nil, fmt.Errorf("policy: %w", err)
		}
		files := []string{p}
		if st.IsDir() {
			if files, err = filepath.Glob(filepath.Join(p, "*.cedar")); err != nil {
				return nil, fmt.Errorf("policy: %w", err)
			}
			if len(files) == 0 {
				return nil, fmt.Errorf("policy: %s holds no *.cedar files", p)
			}
		}
		for _, f := range files {
			b, err := os.ReadFile(f)
			if err != nil {
				return nil, fmt.Errorf("policy: %w", err)
			}
			docs[f] = b
		}
	}
	if len(docs) == 0 {
		return nil, errors.New("policy: no policy files")
	}
	return Parse(docs)
}

func tags(labels map[string]string) cedar.Record {
	m := cedar.RecordMap{}
	for k, v := range labels {
		m[cedar.String(k)] = cedar.String(v)
	}
	return cedar.NewRecord(m)
}

func (s *Set) decide(principal Principal, action Action, resource cedar.EntityUID, resEntity *cedar.Entity) Decision {
	return s.decideWith(s.ps, principal, action, resource, resEntity)
}

func (s *Set) decideWith(ps *cedar.PolicySet, principal Principal, action Action, resource cedar.EntityUID, resEntity *cedar.Entity) Decision {
	return s.decideIn(ps, principal, action, resource, resEntity, cedar.NewRecord(nil))
}

func (s *Set) decideIn(ps *cedar.PolicySet, principal Principal, action Action, resource cedar.EntityUID, resEntity *cedar.Entity, context cedar.Record) Decision {
	et, ok := principal.Kind.entityType()
	if !ok || principal.Name == "" {
		return Decision{}
	}
	puid := cedar.NewEntityUID(et, cedar.String(principal.Name))
	attrs := cedar.RecordMap{"trust_domain": cedar.String(principal.TrustDomain)}
	if principal.Kind == KindEdge {
		attrs["region"] = cedar.String(principal.Region)
	}
	entities := cedar.EntityMap{
		puid: {UID: puid, Attributes: cedar.NewRecord(attrs), Tags: tags(principal.Labels)},
	}
	if resEntity != nil {
		entities[resource] = *resEntity
	}
	req := cedar.Request{
		Principal: puid,
		Action:    cedar.NewEntityUID("Action", cedar.String(action)),
		Resource:  resource,
		Context:   context,
	}
	// The schema says which principal kinds each action applies to; Cedar
	// does not enforce that when it evaluates, so a policy with an
	// unconstrained action could grant a client an admin action. Requests
	// outside the schema are denied whatever the policies say.
	if v, err := validator(); err != nil || v.Request(req) != nil {
		return Decision{Policies: []string{"schema"}}
	}
	dec, diag := cedar.Authorize(ps, entities, req)
	d := Decision{Allowed: dec == cedar.Allow}
	for _, r := range diag.Reasons {
		d.Policies = append(d.Policies, string(r.PolicyID))
	}
	// Cedar reports them in no fixed order; the audit line names them
	// sorted, the same for the same decision.
	slices.Sort(d.Policies)
	for _, e := range diag.Errors {
		d.Errors = append(d.Errors, e.String())
	}
	return d
}

// AuthorizeKey decides whether principal may perform action on key.
func (s *Set) AuthorizeKey(principal Principal, action Action, key Key) Decision {
	return s.evaluate(s.ps, principal, action, key)
}

func (s *Set) evaluate(ps *cedar.PolicySet, principal Principal, action Action, key Key) Decision {
	uid, ent := keyEntity(key)
	return s.decideWith(ps, principal, action, uid, &ent)
}

func keyEntity(key Key) (cedar.EntityUID, cedar.Entity) {
	uid := cedar.NewEntityUID("Key", cedar.String(key.Name))
	return uid, cedar.Entity{UID: uid, Tags: tags(key.Labels), Attributes: cedar.NewRecord(cedar.RecordMap{
		"type": cedar.String(key.Type), "mode": cedar.String(key.Mode), "root": cedar.String(key.Root),
	})}
}

// AuthorizeForward decides whether edge may relay a call to the central
// tier: operation (a method name such as Encrypt or CreateKey) on key, or
// on the service when key is nil; admin marks KeyAdmin calls. It decides
// the edge's own right only: the central tier still authorizes the caller
// the edge relays for.
func (s *Set) AuthorizeForward(edge Principal, key *Key, operation string, admin bool) Decision {
	ctx := cedar.NewRecord(cedar.RecordMap{"operation": cedar.String(operation), "admin": cedar.Boolean(admin)})
	if key == nil {
		uid := cedar.NewEntityUID("Service", "keybroker")
		return s.decideIn(s.ps, edge, Forward, uid, &cedar.Entity{UID: uid}, ctx)
	}
	uid, ent := keyEntity(*key)
	return s.decideIn(s.ps, edge, Forward, uid, &ent, ctx)
}

// AuthorizeService decides an action that names no key.
func (s *Set) AuthorizeService(principal Principal, action Action) Decision {
	uid := cedar.NewEntityUID("Service", "keybroker")
	return s.decide(principal, action, uid, &cedar.Entity{UID: uid})
}

// Engine holds the policy set in force.
type Engine struct {
	paths    []string
	cur      atomic.Pointer[Set]
	mu       sync.Mutex // serialises reloads
	lastErr  atomic.Pointer[error]
	reloads  atomic.Uint64
	failures atomic.Uint64
}

// NewEngine loads the policies at paths; an error here is fatal (there is
// no previous policy to keep).
func NewEngine(paths ...string) (*Engine, error) {
	s, err := LoadFiles(paths...)
	if err != nil {
		return nil, err
	}
	e := &Engine{paths: slices.Clone(paths)}
	e.cur.Store(s)
	return e, nil
}

// Current returns the set in force.
func (e *Engine) Current() *Set { return e.cur.Load() }

// Reload re-reads the policy files. On success the new set takes over and
// changed reports whether its content differs; on error the previous set
// stays in force and the error is returned (and kept for LastError).
func (e *Engine) Reload() (changed bool, err error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	s, err := LoadFiles(e.paths...)
	if err != nil {
		e.failures.Add(1)
		e.lastErr.Store(&err)
		return false, err
	}
	e.lastErr.Store(nil)
	e.reloads.Add(1)
	old := e.cur.Swap(s)
	return old.Hash() != s.Hash(), nil
}

// ReadFiles loads the engine's policy files without putting them in
// force: a central node on a shared store publishes them, and every node
// installs the set the store holds.
func (e *Engine) ReadFiles() (*Set, error) { return LoadFiles(e.paths...) }

// Install puts s in force and reports whether its content differs from
// the set it replaces.
func (e *Engine) Install(s *Set) (changed bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.cur.Swap(s).Hash() != s.Hash()
}

// LastError is the error of the most recent failed reload, or nil after a
// successful one.
func (e *Engine) LastError() error {
	if p := e.lastErr.Load(); p != nil {
		return *p
	}
	return nil
}

// Stats reports successful and failed reloads.
func (e *Engine) Stats() (reloads, failures uint64) { return e.reloads.Load(), e.failures.Load() }

// Edge enrollment: admin actions on the service that set which edges
// belong to the cluster and their region and labels.
const (
	EnrollNode Action = "EnrollNode"
	UpdateNode Action = "UpdateNode"
	RemoveNode Action = "RemoveNode"
)

// AWS access keys: admin actions on the service that make, list and
// revoke the keys AWS clients sign with (package accesskey).
const (
	CreateAccessKey Action = "CreateAccessKey"
	ListAccessKeys  Action = "ListAccessKeys"
	RevokeAccessKey Action = "RevokeAccessKey"
)
