package central

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync"
	"time"

	"github.com/keybroker/keybroker/broker/store"
	"github.com/keybroker/keybroker/internal/tick"
	"github.com/keybroker/keybroker/policy"
)

// The policy set on a shared store. With store.etcd the policy in force at
// every central node is the one set the store holds, so every central and,
// through their Watch streams, every edge enforce one policy revision.
// Policies are still written as files on a central node, which puts them
// in the store:
//
//   - at start, only when the store holds no set yet (a node started with
//     older files does not undo a newer policy);
//   - on SIGHUP, when its files differ from the set in force;
//   - at its policy.reload_interval, when its files changed since it last
//     read them.
//
// Every node reads the stored set every second and puts it in force; a
// node whose files differ from it says so in its /ready checks
// ("policy_files") and its log, so an operator sees a node whose files
// were not updated. Each publication is audited by the node that made it.

// kindPolicy holds the policy set in force, as the object policySetID.
const kindPolicy store.Kind = "policy"

const policySetID = "set"

// storedPolicy is the policy set as the store keeps it.
type storedPolicy struct {
	Hash        string            `json:"hash"`
	PublishedBy string            `json:"published_by"`
	PublishedAt time.Time         `json:"published_at"`
	Files       map[string][]byte `json:"files"`
}

// policyShare keeps a node's policy engine on the store's set.
type policyShare struct {
	st     store.Store
	engine *policy.Engine
	node   string
	log    *slog.Logger
	audit  func(op, detail string, err error) error

	mu        sync.Mutex
	rev       uint64 // revision of the stored set last installed; 0 before
	by        string // the node that published it
	filesHash string // this node's files when it last read them
	readErr   error  // the last reload's error, nil after a good one
}

// start puts the store's set in force, or publishes this node's files
// (already in force) when the store holds none.
func (p *policyShare) start(ctx context.Context) error {
	files, err := portable(p.engine.Current())
	if err != nil {
		return err
	}
	p.mu.Lock()
	p.filesHash = files.Hash()
	p.mu.Unlock()
	err = p.sync(ctx)
	if errors.Is(err, store.ErrNotFound) {
		return p.publish(ctx, files)
	}
	return err
}

// portable is set with its files named by their base names, so that nodes
// keeping the same files under different directories publish the same set
// (a set's hash covers its file names); when two files share a base name,
// their paths stay.
func portable(set *policy.Set) (*policy.Set, error) {
	docs := set.Documents()
	byBase := make(map[string][]byte, len(docs))
	for name, doc := range docs {
		base := filepath.Base(name)
		if _, dup := byBase[base]; dup {
			return set, nil
		}
		byBase[base] = doc
	}
	return policy.Parse(byBase)
}

// follow reads the stored set every second until ctx ends.
func (p *policyShare) follow(ctx context.Context) {
	tick.Every(ctx, time.Second, func() {
		if err := p.sync(ctx); err != nil && !errors.Is(err, store.ErrNotFound) && ctx.Err() == nil {
			p.log.Warn("reading the policy set in force from the store", "err", err)
		}
	})
}

// sync installs the stored set if it changed since last installed.
func (p *policyShare) sync(ctx context.Context) error {
	o, err := p.st.Get(ctx, kindPolicy, policySetID)
	if err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if o.Revision == p.rev {
		return nil
	}
	var sp storedPolicy
	if err := json.Unmarshal(o.Value, &sp); err != nil {
		return fmt.Errorf("the stored policy set is corrupt: %w", err)
	}
	set, err := policy.Parse(sp.Files)
	if err != nil {
		return fmt.Errorf("the stored policy set (published by %s) does not load here; the previous set stays in force: %w", sp.PublishedBy, err)
	}
	if set.Hash() != sp.Hash {
		return fmt.Errorf("the stored policy set's hash %.12s does not match its files' %.12s", sp.Hash, set.Hash())
	}
	p.rev, p.by = o.Revision, sp.PublishedBy
	if p.engine.Install(set) {
		p.log.Info("policy from the store", "policy", set.Hash()[:12], "published_by", sp.PublishedBy, "published_at", sp.PublishedAt)
	}
	if p.filesHash != set.Hash() {
		p.log.Warn("this node's policy files differ from the set in force; SIGHUP it to publish them, or update them",
			"files", p.filesHash[:12], "in_force", set.Hash()[:12], "published_by", sp.PublishedBy)
	}
	return nil
}

// publish puts set in the store as the set in force, over whatever is
// there (an operator's reload wins), and in force here. It is audited
// before it is written; an audit failure publishes nothing.
func (p *policyShare) publish(ctx context.Context, set *policy.Set) error {
	value, err := json.Marshal(storedPolicy{Hash: set.Hash(), PublishedBy: p.node, PublishedAt: time.Now().UTC(), Files: set.Documents()})
	if err != nil {
		return err
	}
	detail := "policy " + set.Hash()[:12] + " published to the store"
	if err := p.audit("PublishPolicy", detail, nil); err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for range 3 {
		rev, err := p.st.Put(ctx, kindPolicy, policySetID, value, p.rev)
		if err == nil {
			p.rev, p.by = rev, p.node
			p.engine.Install(set)
			p.log.Info("policy published to the store", "policy", set.Hash()[:12])
			return nil
		}
		if !errors.Is(err, store.ErrConflict) {
			_ = p.audit("PublishPolicy", detail, err)
			return err
		}
		// Another node published meanwhile: write over it, at its revision.
		o, gerr := p.st.Get(ctx, kindPolicy, policySetID)
		switch {
		case errors.Is(gerr, store.ErrNotFound):
			p.rev = 0
		case gerr != nil:
			return gerr
		default:
			p.rev = o.Revision
		}
	}
	err = errors.New("the policy set kept changing under this node's publication; try again")
	_ = p.audit("PublishPolicy", detail, err)
	return err
}

// reload reads this node's files and publishes them when they differ from
// the set in force — explicit (SIGHUP) — or when they changed since this
// node last read them (the reload interval).
func (p *policyShare) reload(ctx context.Context, explicit bool) (published bool, err error) {
	set, err := p.engine.ReadFiles()
	if err == nil {
		set, err = portable(set)
	}
	p.mu.Lock()
	p.readErr = err
	p.mu.Unlock()
	if err != nil {
		return false, err
	}
	p.mu.Lock()
	changed := set.Hash() != p.filesHash
	p.filesHash = set.Hash()
	p.mu.Unlock()
	if set.Hash() == p.engine.Current().Hash() || !explicit && !changed {
		return false, nil
	}
	return true, p.publish(ctx, set)
}

// lastError is the last reload's error.
func (p *policyShare) lastError() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.readErr
}

// differs says how this node's files stand against the set in force:
// "" when they are the same.
func (p *policyShare) differs() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.filesHash == p.engine.Current().Hash() {
		return ""
	}
	return fmt.Sprintf("differ from the set in force (%.12s, published by %s): SIGHUP this node to publish its files, or update them",
		p.engine.Current().Hash(), p.by)
}
