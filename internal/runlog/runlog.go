// Package runlog records, for delivery checks, the handler runs of a test
// service and the calls made to it, each as one JSON line in a file, and
// checks them against each other message ID by message ID.
//
// It extends the accounting of the soak (cmd/aegis-soak): there the count
// service answers every run with its number (1, 2, 3, … per process of an
// instance) and an acknowledged call must carry a run of its own. Here the
// service also writes each run down with the message ID it ran, so runs
// are counted per message ID instead of inferred per instance.
package runlog

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"sync"
)

// Run is one run of a handler.
type Run struct {
	Instance  string `json:"instance"`
	Run       int64  `json:"run"` // the instance's run number in its process, from 1
	Method    string `json:"method"`
	MessageID string `json:"message_id"`
}

// Call is one finished call as its caller saw it.
type Call struct {
	MessageID string `json:"message_id"`
	Method    string `json:"method"`
	Instance  string `json:"instance,omitempty"` // the instance whose answer the caller got
	Run       int64  `json:"run,omitempty"`      // the run number that answer carried
	Err       string `json:"err,omitempty"`      // "" when the call was answered
}

// Writer appends JSON lines to a file, each with one write, so a line is
// whole even when the process is killed right after. Safe for concurrent
// use.
type Writer struct {
	mu  sync.Mutex // serialises writes and guards err
	f   *os.File
	err error // the first write error
}

// Create opens path for appending, creating it when needed.
func Create(path string) (*Writer, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	return &Writer{f: f}, nil
}

// Write appends v as one JSON line. After a failed write every later one
// returns the first error.
func (w *Writer) Write(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	b = append(b, '\n')
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err == nil {
		_, w.err = w.f.Write(b)
	}
	return w.err
}

// Close closes the file and returns the first write error, if any.
func (w *Writer) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := w.f.Close(); w.err == nil {
		w.err = err
	}
	return w.err
}

// Read returns the JSON lines of the file at path, decoded as T. A last
// line without its newline is ignored: its writer was stopped mid-write.
func Read[T any](path string) ([]T, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	lines := bytes.Split(data, []byte{'\n'})
	out := make([]T, 0, len(lines)-1)
	for i, ln := range lines[:len(lines)-1] { // the last is "" or the unterminated tail
		var v T
		if err := json.Unmarshal(ln, &v); err != nil {
			return nil, fmt.Errorf("%s line %d: %w", path, i+1, err)
		}
		out = append(out, v)
	}
	return out, nil
}
