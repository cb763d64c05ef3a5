// This file holds the batching frame writer shared by client and server connections.

package rpc

import (
	"net"
	"runtime"
	"sync"
	"sync/atomic"
)

// maxRetainedWriteBuf caps the capacity of a write buffer kept for reuse
// after a batch, so one large frame does not pin memory for the life of the
// connection.
const maxRetainedWriteBuf = 256 << 10

// frameWriter batches frames onto a connection. Use it as
//
//	if err := w.lock(); err != nil { ... }
//	w.buf = appendXxxFrame(w.buf, ...)
//	err := w.commit()
//
// The goroutine whose commit finds no write in progress becomes the writer:
// it writes the buffer, and keeps writing whatever others appended meanwhile
// until the buffer is empty. Others return at once; their frames go out with
// the writer's next batch.
type frameWriter struct {
	conn net.Conn
	// onError is called once, without the lock held, by the goroutine whose
	// write failed.
	onError func(error)

	mu      sync.Mutex
	buf     []byte         // frames waiting to be written
	spare   []byte         // the other buffer, reused once the current batch is written
	writing bool           // a goroutine is writing a batch
	err     error          // sticky: once set, nothing more is written
	waiters int            // goroutines waiting in lockBounded
	stalls  *atomic.Uint64 // if set, counts the waits in lockBounded
	room    *sync.Cond     // on mu: signalled when a batch is taken out, on failure or shutdown
}

// lock takes the writer's lock so a frame can be appended to w.buf. On error
// (the writer failed or was shut down) the lock is not held.
func (w *frameWriter) lock() error {
	w.mu.Lock()
	if w.err != nil {
		err := w.err
		w.mu.Unlock()
		return err
	}
	return nil
}

// lockBounded is lock for a writer whose queue is bounded: while a write is
// under way and limit bytes already wait behind it, it waits until that
// write finishes. It reports whether it waited.
func (w *frameWriter) lockBounded(limit int) (waited bool, err error) {
	w.mu.Lock()
	for w.writing && len(w.buf) >= limit && w.err == nil {
		if w.room == nil {
			w.room = sync.NewCond(&w.mu)
		}
		if !waited && w.stalls != nil {
			w.stalls.Add(1)
		}
		waited = true
		w.waiters++
		w.room.Wait()
		w.waiters--
	}
	if w.err != nil {
		err := w.err
		w.mu.Unlock()
		return waited, err
	}
	return waited, nil
}

// wakeLocked wakes the goroutines waiting in lockBounded. The caller holds
// w.mu.
func (w *frameWriter) wakeLocked() {
	if w.waiters > 0 {
		w.room.Broadcast()
	}
}

// unlock releases the lock taken by lock, leaving the appended frame queued
// for the next commit.
func (w *frameWriter) unlock() { w.mu.Unlock() }

// commit releases the lock taken by lock after a frame was appended, writing
// the queued frames if no other goroutine is. If busy (other frames are
// likely on their way), the writer first yields its P once so that runnable
// goroutines can add their frames to the same batch. It returns an error
// only when this goroutine's own write failed.
func (w *frameWriter) commit(busy bool) error {
	if w.writing {
		w.mu.Unlock()
		return nil
	}
	w.writing = true
	if busy {
		w.mu.Unlock()
		runtime.Gosched()
		w.mu.Lock()
	}
	var err error
	for len(w.buf) > 0 && w.err == nil {
		out := w.buf
		w.buf = w.spare[:0]
		w.wakeLocked()
		w.mu.Unlock()
		_, err = w.conn.Write(out)
		if cap(out) > maxRetainedWriteBuf {
			out = nil
		}
		w.mu.Lock()
		w.spare = out[:0]
		if err != nil && w.err == nil {
			w.err = err
		}
	}
	if w.err != nil { // failed or shut down: drop whatever was queued
		w.buf, w.spare = nil, nil
		w.wakeLocked()
	}
	w.writing = false
	w.mu.Unlock()
	if err != nil && w.onError != nil {
		w.onError(err)
	}
	return err
}

// shutdown makes every later lock fail with err and drops queued frames. It
// does not close the connection.
func (w *frameWriter) shutdown(err error) {
	w.mu.Lock()
	if w.err == nil {
		w.err = err
	}
	if !w.writing {
		w.buf, w.spare = nil, nil
	}
	w.wakeLocked()
	w.mu.Unlock()
}
