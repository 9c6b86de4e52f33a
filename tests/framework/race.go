//go:build race

package framework

// raceEnabled says the test binary is built with -race; the keybroker
// binary is then built with it too, so the processes are checked as well.
const raceEnabled = true
