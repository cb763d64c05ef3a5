//go:build !unix

// This file stands in for the soak on systems without Unix signals.

package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Fprintln(os.Stderr, "aegis-soak: needs Unix signals (SIGKILL, SIGSTOP, SIGTERM) and runs only on Unix systems")
	os.Exit(2)
}
