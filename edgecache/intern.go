package edgecache

import (
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"unique"

	"github.com/keybroker/keybroker/managed"
)

// maxLabelSets bounds the distinct label sets the replica shares among
// keys: past it, a new set is kept by its key alone, as before.
const maxLabelSets = 4096

// labelSets shares one labels map among the replica's keys that carry
// the same labels. A Go map of two labels costs some 300 bytes, most of
// a key's memory at an edge, and keys mostly repeat a few label sets
// (an owner, a team). Keys in the replica are never changed in place (a
// change replaces the key), so a shared map is only ever read.
type labelSets struct {
	mu   sync.Mutex
	sets map[string]map[string]string
}

// intern gives the shared map equal to m, making m the shared one if
// there is none yet and the table has room.
func (l *labelSets) intern(m map[string]string) map[string]string {
	if len(m) == 0 {
		return m
	}
	var b strings.Builder
	for _, k := range slices.Sorted(maps.Keys(m)) {
		b.WriteString(strconv.Itoa(len(k)))
		b.WriteByte(':')
		b.WriteString(k)
		b.WriteString(strconv.Itoa(len(m[k])))
		b.WriteByte(':')
		b.WriteString(m[k])
	}
	id := b.String()
	l.mu.Lock()
	defer l.mu.Unlock()
	if s, ok := l.sets[id]; ok {
		return s
	}
	if l.sets == nil {
		l.sets = map[string]map[string]string{}
	}
	if len(l.sets) < maxLabelSets {
		l.sets[id] = m
	}
	return m
}

// intern shares the parts of a key parsed from the wire that keys repeat:
// its labels, placement expression and root key names (one copy of each
// string, through package unique).
func (c *Cache) intern(k *managed.Key) {
	k.Labels = c.labelSets.intern(k.Labels)
	k.Placement = unique.Make(k.Placement).Value()
	for i := range k.Versions {
		k.Versions[i].RootKey = unique.Make(k.Versions[i].RootKey).Value()
	}
}
