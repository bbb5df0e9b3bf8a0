//go:build race

package submission

// raceEnabled: the race detector slows the per-octet DATA loops about
// tenfold, so the big-message test sends less under it.
const raceEnabled = true
