//go:build unix

// This file reads a process's resident memory and thread count from
// /proc/PID/status (Linux; elsewhere the figures are reported missing).

package main

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// procStat is one reading of a process's /proc/PID/status.
type procStat struct {
	ok         bool  // false: not read (no /proc, or the process had gone)
	rssKiB     int64 // VmRSS
	threads    int64 // Threads
	goroutines int   // goroutines, for the soak's own process only; -1 otherwise
}

// readProcStat reads /proc/PID/status; g is recorded as its goroutine count (-1: unknown).
func readProcStat(pid, g int) procStat {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return procStat{goroutines: g}
	}
	s := parseProcStatus(string(data))
	s.goroutines = g
	return s
}

// parseProcStatus reads VmRSS (kB) and Threads from the text of a
// /proc/PID/status file; ok only when both are there.
func parseProcStatus(text string) procStat {
	var s procStat
	var haveRSS, haveThreads bool
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		key, val, found := strings.Cut(sc.Text(), ":")
		if !found {
			continue
		}
		fields := strings.Fields(val)
		if len(fields) == 0 {
			continue
		}
		n, err := strconv.ParseInt(fields[0], 10, 64)
		if err != nil {
			continue
		}
		switch key {
		case "VmRSS":
			s.rssKiB, haveRSS = n, true
		case "Threads":
			s.threads, haveThreads = n, true
		}
	}
	s.ok = haveRSS && haveThreads
	return s
}

// String is "RSS 21.3 MiB, 9 threads" (plus goroutines when known).
func (s procStat) String() string {
	if !s.ok {
		if s.goroutines >= 0 {
			return fmt.Sprintf("%d goroutines, RSS n/a", s.goroutines)
		}
		return "n/a"
	}
	out := fmt.Sprintf("RSS %.1f MiB, %d threads", float64(s.rssKiB)/1024, s.threads)
	if s.goroutines >= 0 {
		out = fmt.Sprintf("%d goroutines, ", s.goroutines) + out
	}
	return out
}
