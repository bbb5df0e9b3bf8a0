//go:build !race

package submission

const raceEnabled = false
