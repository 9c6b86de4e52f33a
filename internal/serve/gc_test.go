package serve

import (
	"runtime/debug"
	"testing"
)

func TestTuneGC(t *testing.T) {
	prev := debug.SetGCPercent(100)
	defer debug.SetGCPercent(prev)
	if got := TuneGC(func(string) string { return "" }); got != DefaultGCPercent {
		t.Errorf("TuneGC without GOGC = %d, want %d", got, DefaultGCPercent)
	}
	if cur := debug.SetGCPercent(100); cur != DefaultGCPercent {
		t.Errorf("GC percent in force %d, want %d", cur, DefaultGCPercent)
	}
	for v, want := range map[string]int{"50": 50, "off": -1, "x": 100} {
		if got := TuneGC(func(k string) string { return map[string]string{"GOGC": v}[k] }); got != want {
			t.Errorf("TuneGC with GOGC=%s = %d, want %d", v, got, want)
		}
		if cur := debug.SetGCPercent(100); cur != 100 {
			t.Errorf("GOGC=%s: TuneGC changed the GC percent to %d; the environment's must stand", v, cur)
		}
	}
}
