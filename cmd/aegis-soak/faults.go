//go:build unix

// This file holds the fault schedule: which fault hits which agent when,
// drawn from a seeded generator so that a seed replays the same plan.

package main

import (
	"fmt"
	"math/rand/v2"
	"time"
)

// faultKind is one way an agent process is disturbed.
type faultKind int

const (
	// faultKill: SIGKILL, then a new process under the same name.
	faultKill faultKind = iota
	// faultStop: SIGSTOP for longer than the heartbeat timeout, then
	// SIGCONT.
	faultStop
	// faultTerm: SIGTERM (the agent leaves gracefully and exits), then a
	// new process under the same name.
	faultTerm
	numFaultKinds
)

func (k faultKind) String() string {
	switch k {
	case faultKill:
		return "kill -9"
	case faultStop:
		return "SIGSTOP"
	case faultTerm:
		return "SIGTERM"
	}
	return fmt.Sprintf("fault(%d)", int(k))
}

// restarts reports whether the fault ends the process, so that a new one
// is started under the same name.
func (k faultKind) restarts() bool { return k == faultKill || k == faultTerm }

// Bounds of the random parts of a fault.
const (
	// A stop lasts the heartbeat timeout plus stopExtraMin to
	// stopExtraMin+stopExtraSpread.
	stopExtraMin    = 2 * time.Second
	stopExtraSpread = 2 * time.Second
	// A restart follows the old process's exit after restartDelayMin to
	// restartDelayMin+restartDelaySpread. The minimum also separates the
	// answers of two processes of one agent in time (see lifeOf).
	restartDelayMin    = 100 * time.Millisecond
	restartDelaySpread = 500 * time.Millisecond
)

// faultPlan is one planned fault.
type faultPlan struct {
	// wait is the pause before the fault, from the end of the previous
	// one (or from the start of the load).
	wait     time.Duration
	kind     faultKind
	agent    int           // index of the agent
	newPorts bool          // restarts only: on new ports rather than the old ones
	hold     time.Duration // stop: how long stopped; restarts: pause before the restart
}

// planner draws fault plans. Not safe for concurrent use.
type planner struct {
	rng       *rand.Rand
	every     time.Duration // mean wait between faults
	hbTimeout time.Duration
	agents    int
}

func newPlanner(seed uint64, every, hbTimeout time.Duration, agents int) *planner {
	return &planner{rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)), every: every, hbTimeout: hbTimeout, agents: agents}
}

// next draws the next fault: a wait uniform in [every/2, 3×every/2), a
// kind and an agent uniformly, and the kind's random parts. It draws the
// same number of values whatever the kind, so that the n-th plan of a seed
// does not depend on the kinds before it.
func (p *planner) next() faultPlan {
	f := faultPlan{
		wait:  p.every/2 + time.Duration(p.rng.Int64N(int64(p.every))),
		kind:  faultKind(p.rng.IntN(int(numFaultKinds))),
		agent: p.rng.IntN(p.agents),
	}
	newPorts := p.rng.IntN(2) == 1
	u := p.rng.Float64()
	switch f.kind {
	case faultStop:
		f.hold = p.hbTimeout + stopExtraMin + time.Duration(u*float64(stopExtraSpread))
	default:
		f.newPorts = newPorts
		f.hold = restartDelayMin + time.Duration(u*float64(restartDelaySpread))
	}
	return f
}

// maxFaultSpan bounds how long a planned fault takes before its agent can
// be expected back: the fault loop starts no fault later than this before
// the end of the load, so that the recovery happens under load.
func maxFaultSpan(hbTimeout time.Duration) time.Duration {
	return hbTimeout + stopExtraMin + stopExtraSpread + 5*time.Second
}
