package edgecache

import (
	"github.com/prometheus/client_golang/prometheus"
)

// RegisterMetrics adds the cache's gauges and counters to reg:
// keybroker_edge_material_entries, _material_hits_total,
// _material_misses_total, _material_evictions_total, _fetches_total,
// _fetch_refusals_total, _forwards_total, _events_total, _events_queued,
// _replica_commits_total, _reconnects_total, _reconnect_wakes_total, _data_keys_refused_total, _revision, _connected and
// _lease_remaining_seconds
// (negative once the lease has run out).
func (c *Cache) RegisterMetrics(reg prometheus.Registerer) error {
	gauge := func(name, help string, f func() float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "keybroker", Subsystem: "edge", Name: name, Help: help}, f)
	}
	counter := func(name, help string, f func() uint64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Namespace: "keybroker", Subsystem: "edge", Name: name, Help: help},
			func() float64 { return float64(f()) })
	}
	for _, col := range []prometheus.Collector{
		gauge("material_entries", "Key versions whose opened material is in memory.", func() float64 { return float64(c.plain.Len()) }),
		counter("material_hits_total", "Material requests served from memory.", c.plain.hits),
		counter("material_misses_total", "Material requests not in memory (opened from the sealed form or fetched).", c.plain.misses),
		counter("material_evictions_total", "Material entries evicted, expired or purged (and zeroed).", c.plain.evictions),
		counter("fetches_total", "FetchMaterial calls to the central tier.", c.stats.fetches.Load),
		counter("fetch_refusals_total", "FetchMaterial calls the central tier refused (placement).", c.stats.fetchRefusals.Load),
		counter("forwards_total", "Calls forwarded to the central tier.", c.stats.forwards.Load),
		counter("events_total", "Watch events applied.", c.stats.events.Load),
		gauge("events_queued", "Watch events received and not yet applied (at most 1,000).", func() float64 { return float64(c.stats.queued.Load()) }),
		counter("replica_commits_total", "Write transactions committed to replica.db for the Watch stream (one fdatasync each).", c.disk.commits.Load),
		counter("reconnects_total", "Times the edge lost the central tier and reconnected.", c.stats.reconnects.Load),
		counter("reconnect_wakes_total", "Retry waits cut short because the connection to the central tier came back up.", c.stats.wakes.Load),
		counter("data_keys_refused_total", "Data keys refused because their key version had wrapped data_key_reuse.max_data_keys_per_version here (rotate the key).", c.ops.DataKeysRefused),
		gauge("revision", "The last registry revision applied.", func() float64 { return float64(c.Revision()) }),
		gauge("connected", "1 while the edge follows the central tier.", func() float64 {
			if c.Connected() {
				return 1
			}
			return 0
		}),
		gauge("lease_remaining_seconds", "Seconds until the edge's lease runs out (negative after).", func() float64 {
			l := c.LeaseExpires()
			if l.IsZero() {
				return 0
			}
			return l.Sub(c.now()).Seconds()
		}),
	} {
		if err := reg.Register(col); err != nil {
			return err
		}
	}
	return nil
}

// Stats is a snapshot of the cache's counters, for tests and benchmarks.
type Stats struct {
	Fetches, FetchRefusals, Forwards, Events, Reconnects uint64
	// ReconnectWakes counts retry waits cut short by the connection to
	// the central tier coming back up.
	ReconnectWakes                                  uint64
	MaterialHits, MaterialMisses, MaterialEvictions uint64
	MaterialEntries                                 int
	DataKeysCreated                                 uint64
	// ReplicaCommits counts the write transactions committed to
	// replica.db for the Watch stream.
	ReplicaCommits uint64
}

// Stats returns the counters.
func (c *Cache) Stats() Stats {
	return Stats{
		Fetches: c.stats.fetches.Load(), FetchRefusals: c.stats.fetchRefusals.Load(), Forwards: c.stats.forwards.Load(),
		Events: c.stats.events.Load(), Reconnects: c.stats.reconnects.Load(), ReconnectWakes: c.stats.wakes.Load(),
		MaterialHits: c.plain.hits(), MaterialMisses: c.plain.misses(), MaterialEvictions: c.plain.evictions(),
		MaterialEntries: c.plain.Len(), DataKeysCreated: c.ops.DataKeysCreated(),
		ReplicaCommits: c.disk.commits.Load(),
	}
}
