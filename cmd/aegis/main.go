// Command aegis runs Aegis cluster nodes from the command line: a standalone
// agent that hosts built-in test services, and a load generator for
// trying failover by hand and in tests.
//
// Usage:
//
//	aegis agent [flags]                  run a node that joins the cluster and serves built-in services
//	aegis load  [flags]                  (for testing) call a service at a fixed rate and print JSON statistics
//	aegis members [flags]                list the cluster's nodes and their state
//	aegis services [SERVICE] [flags]     list service instances: status, role, node, heartbeat age, ejection
//	aegis watch [flags]                  print the cluster's changes as they happen
//	aegis route SERVICE [flags]          say which instance a call would reach, and why
//	aegis call SERVICE METHOD PAYLOAD    call with failover, printing every attempt
//	aegis help [command]                 show this text, or a command's flags
//
// members, services, watch and route read a node's admin endpoint (-admin
// URL) or join the cluster as an observer that registers nothing (-join);
// call joins.
//
// Exit status: 0 on success (for agent: after a graceful leave), 1 on a
// runtime error or a forced stop (a second signal), 2 on a usage error.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
)

// command is one subcommand. run gets the arguments after the command's
// name and returns nil, flag.ErrHelp after printing help, a *usageError, or
// any other error (exit status 1).
type command struct {
	name    string
	summary string
	run     func(args []string, stdout, stderr io.Writer) error
}

// commands lists the subcommands in the order usage shows them.
var commands = []command{
	{"agent", "run a node that joins the cluster and serves built-in services", runAgent},
	{"load", "(for testing) call a service at a fixed rate and print statistics as JSON lines", runLoad},
	{"members", "list the cluster's nodes and their state", runMembers},
	{"services", "list service instances: status, role, node, heartbeat age, ejection", runServices},
	{"watch", "print the cluster's changes as they happen", runWatch},
	{"route", "say which instance of a service a call would reach now, and why", runRoute},
	{"call", "call a service's method with failover, printing every attempt", runCall},
}

// usageError is a mistake on the command line: the message is printed with
// a hint to the command's help, and the exit status is 2.
type usageError struct{ err error }

func (e *usageError) Error() string { return e.err.Error() }
func (e *usageError) Unwrap() error { return e.err }

func usagef(format string, args ...any) error {
	return &usageError{fmt.Errorf(format, args...)}
}

func usage(w io.Writer) {
	fmt.Fprint(w, "usage: aegis <command> [flags]\n\ncommands:\n")
	for _, c := range commands {
		fmt.Fprintf(w, "  %-9s %s\n", c.name, c.summary)
	}
	fmt.Fprint(w, "  help      show this text, or 'aegis help <command>' for a command's flags and examples\n")
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run runs the command named by args[0] and returns the exit status.
func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		usage(stderr)
		return 2
	}
	name, rest := args[0], args[1:]
	switch name {
	case "help", "-h", "-help", "--help":
		if len(rest) == 0 {
			usage(stdout)
			return 0
		}
		name, rest = rest[0], []string{"-h"}
	}
	for _, c := range commands {
		if c.name != name {
			continue
		}
		err := c.run(rest, stdout, stderr)
		var ue *usageError
		switch {
		case err == nil, errors.Is(err, flag.ErrHelp):
			return 0
		case errors.As(err, &ue):
			fmt.Fprintf(stderr, "aegis %s: %v\nRun 'aegis help %s' for usage.\n", name, err, name)
			return 2
		default:
			fmt.Fprintf(stderr, "aegis %s: %v\n", name, err)
			return 1
		}
	}
	fmt.Fprintf(stderr, "aegis: unknown command %q\n\n", name)
	usage(stderr)
	return 2
}
