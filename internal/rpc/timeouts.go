// This file holds a server connection's read timeouts: FrameTimeout and IdleTimeout.

package rpc

import (
	"net"
	"time"
)

// readDeadline keeps a server connection's read deadline armed for its
// FrameTimeout and IdleTimeout without moving it on every read, so that
// calls pay nothing for it:
//   - a frame's deadline is armed only when the reader has part of a frame
//     and must wait for the rest (frames normally arrive whole in one read);
//   - the idle deadline is armed when the connection starts, and moved only
//     when it passes (or an earlier frame deadline passes) on a connection
//     that is not idle: judge then arms the next one.
//
// A deadline that passes too early only makes the reader call judge, which
// arms the right one. It is used only by the goroutine holding the
// connection's reader role.
type readDeadline struct {
	conn  net.Conn
	epoch time.Time // origin of the nanosecond times below (the Server's)
	frame int64     // FrameTimeout in nanoseconds; 0 = none
	idle  int64     // IdleTimeout in nanoseconds; 0 = none

	frameStart int64  // when the reader began waiting for the rest of a frame; 0 = not waiting
	frameNo    uint64 // which frame that was (frameReader.frames then)
}

// newReadDeadline returns the deadline keeper for conn, started at now
// (nanoseconds since epoch), or nil if both timeouts are off.
func newReadDeadline(conn net.Conn, epoch time.Time, now int64, frame, idle time.Duration) *readDeadline {
	if frame <= 0 && idle <= 0 {
		return nil
	}
	d := &readDeadline{conn: conn, epoch: epoch, frame: max(int64(frame), 0), idle: max(int64(idle), 0)}
	if d.idle > 0 {
		d.arm(now + d.idle)
	}
	return d
}

func (d *readDeadline) now() int64 { return int64(time.Since(d.epoch)) }

// arm sets the read deadline to at (nanoseconds since epoch; 0 = none).
func (d *readDeadline) arm(at int64) {
	var t time.Time
	if at != 0 {
		t = d.epoch.Add(time.Duration(at))
	}
	_ = d.conn.SetReadDeadline(t)
}

// beforeRead is called before each read for more bytes, with whether part
// of a frame is in and how many frames were read before it. It arms a
// frame's deadline the first time the reader waits for the rest of it.
func (d *readDeadline) beforeRead(midFrame bool, frames uint64) {
	if !midFrame || d.frame == 0 || (d.frameStart != 0 && d.frameNo == frames) {
		return
	}
	d.frameStart, d.frameNo = d.now(), frames
	d.arm(d.frameStart + d.frame)
}

// resume restarts the time of the frame in progress at the next read, after
// the reader stopped reading on purpose (at MaxInflightPerConn).
func (d *readDeadline) resume() { d.frameStart = 0 }

// timeoutVerdict is what a passed read deadline means for the connection.
type timeoutVerdict int

const (
	timeoutNotYet timeoutVerdict = iota // no timeout: arm the next deadline
	timeoutIdle                         // idle for IdleTimeout: close
	timeoutFrame                        // a frame took FrameTimeout: close
)

// judge decides, once a read has hit the deadline at now, whether the
// connection timed out. midFrame and frames describe the reader; busy says
// whether requests are in flight, and lastActive (nanoseconds since epoch)
// is when the last request was answered, or the connection started. If
// the connection did not time out, judge returns the deadline to arm next
// (0 = none).
func (d *readDeadline) judge(now int64, midFrame bool, frames uint64, busy bool, lastActive int64) (timeoutVerdict, int64) {
	switch {
	case midFrame && d.frame > 0:
		if d.frameStart == 0 || d.frameNo != frames {
			d.frameStart, d.frameNo = now, frames
		}
		if now-d.frameStart >= d.frame {
			return timeoutFrame, 0
		}
		return timeoutNotYet, d.frameStart + d.frame
	case midFrame || d.idle == 0:
		return timeoutNotYet, 0 // nothing bounds this wait
	case busy:
		return timeoutNotYet, now + d.idle
	case now-lastActive >= d.idle:
		return timeoutIdle, 0
	}
	return timeoutNotYet, lastActive + d.idle
}
