//go:build !linux

package samehost

import "fmt"

// Local fails: this system has no /proc to tell the identity from.
func Local() (Identity, error) {
	return Identity{}, fmt.Errorf("samehost: identity only on Linux: %w", ErrUnavailable)
}

// Alive is false: no same-host path runs here.
func Alive(int) bool { return false }
