//go:build !linux

// This file stands in for the verdicts subcommand where network
// namespaces and cgroups do not exist.

package main

import "errors"

func runVerdicts(args []string) error {
	if _, err := parseVerdicts(args, nil); err != nil {
		return err
	}
	return errors.New("verdicts needs Linux (network namespaces, tc and cgroups)")
}
