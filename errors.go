package aegis

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

// Sentinel errors. Match them with errors.Is; the errors Aegis returns wrap
// them with detail.
var (
	// ErrServiceNotFound: no instance of the service is known to this node.
	ErrServiceNotFound = errors.New("aegis: service not found")
	// ErrNoHealthyInstances: the service is known but no instance may be
	// picked (all unhealthy, draining or excluded).
	ErrNoHealthyInstances = errors.New("aegis: no healthy instances")
	// ErrInstanceUnavailable: the addressed instance could not take the call
	// (unknown to its node, draining, or its node unreachable). Retryable.
	ErrInstanceUnavailable = errors.New("aegis: instance unavailable")
	// ErrTimeout: no answer before the deadline.
	ErrTimeout = errors.New("aegis: timeout")
	// ErrDuplicateInstance: an instance with this service and ID is already
	// registered.
	ErrDuplicateInstance = errors.New("aegis: duplicate instance")
	// ErrShutdown: the node has left or shut down.
	ErrShutdown = errors.New("aegis: node shut down")
	// ErrInvalidConfig: Config.Validate found a problem; the wrapping error
	// names the field.
	ErrInvalidConfig = errors.New("aegis: invalid config")
	// ErrInvalidName: a service name, instance ID or metadata entry breaks
	// the rules documented on Service.
	ErrInvalidName = errors.New("aegis: invalid name")
)

// RemoteError is an error returned by a remote handler (or by the remote
// node on the handler's behalf), carried back to the caller.
type RemoteError struct {
	// Code is a short machine-readable class, e.g. "handler", "panic",
	// "unknown-method".
	Code string
	// Message is the handler's error text.
	Message string
	// Retryable marks an error that another instance may not have; failover
	// moves such a call to another instance.
	Retryable bool
}

// Error implements error.
func (e *RemoteError) Error() string {
	return fmt.Sprintf("aegis: remote error %s: %s", e.Code, e.Message)
}

// Attempt records one try of a CallWithFailover.
type Attempt struct {
	InstanceID string
	Err        error
	Duration   time.Duration
}

// FailoverError is returned by CallWithFailover when every attempt failed.
// errors.Is and errors.As look through every attempt's error.
type FailoverError struct {
	Service  string
	Attempts []Attempt
	// Err, when set, is why no further attempt was made (for example
	// ErrNoHealthyInstances once candidates ran out).
	Err error
}

// Error implements error.
func (e *FailoverError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "aegis: call to %q failed after %d attempt(s)", e.Service, len(e.Attempts))
	for _, a := range e.Attempts {
		fmt.Fprintf(&b, "; %s: %v (%s)", a.InstanceID, a.Err, a.Duration.Round(time.Microsecond))
	}
	if e.Err != nil {
		fmt.Fprintf(&b, "; then: %v", e.Err)
	}
	return b.String()
}

// Unwrap returns every attempt's error, then Err.
func (e *FailoverError) Unwrap() []error {
	errs := make([]error, 0, len(e.Attempts)+1)
	for _, a := range e.Attempts {
		errs = append(errs, a.Err)
	}
	if e.Err != nil {
		errs = append(errs, e.Err)
	}
	return errs
}
