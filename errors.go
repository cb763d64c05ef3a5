// This file holds the errors Aegis returns: sentinels, RemoteError and its
// codes, FailoverError.

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
	// ErrInvalidName: a service name, instance ID or metadata key breaks
	// the rules documented on Service.
	ErrInvalidName = errors.New("aegis: invalid name")
	// ErrInvalidService: a Service to register has no Handler or an unknown
	// Role.
	ErrInvalidService = errors.New("aegis: invalid service")
	// ErrRecordTooLarge: an instance's record (names, address, metadata)
	// encodes to more than MaxRecordSize bytes.
	ErrRecordTooLarge = errors.New("aegis: instance record too large")
	// ErrNameConflict: Join found another live node using this node's
	// name.
	ErrNameConflict = errors.New("aegis: node name in use")
	// ErrTooManyInstances: Register would exceed Config.MaxInstancesPerNode
	// or Config.MaxInstances.
	ErrTooManyInstances = errors.New("aegis: too many instances")
	// ErrMessageTooLarge: a request or response exceeded
	// Config.MaxFrameSize.
	ErrMessageTooLarge = errors.New("aegis: message too large")
	// ErrRetryBudgetExhausted: CallWithFailover stopped retrying because
	// retries already make up more than the budget allows (see
	// Config.RetryBudgetRatio).
	ErrRetryBudgetExhausted = errors.New("aegis: retry budget exhausted")
	// ErrRoleConflict: Register was asked for a RoleActive instance in a
	// role group that already has a healthy active. Register it as
	// RoleStandby; it is promoted when the active fails.
	ErrRoleConflict = errors.New("aegis: role group already has an active")
	// ErrNoActive: a call to a role group found no active instance (the
	// active failed and no standby has been promoted yet, or the group has
	// only standbys). CallWithFailover waits for a promotion instead.
	ErrNoActive = errors.New("aegis: role group has no active instance")
)

// Remote error codes set by Aegis itself (handlers choose their own).
const (
	// CodeUnavailable: the addressed instance is not on the node, draining,
	// or the node is shutting down. Retryable.
	CodeUnavailable = "unavailable"
	// CodeHandler: the handler returned a plain error.
	CodeHandler = "handler"
	// CodePanic: the handler panicked; the node kept serving.
	CodePanic = "panic"
	// CodeUnknownMethod: no handler for the method (see Mux).
	CodeUnknownMethod = "unknown-method"
	// CodeNoHandler: the instance registered Endpoints but no Handler; it
	// is discovered through Aegis and called through its own protocol.
	CodeNoHandler = "no-handler"
	// CodeTooLarge: the request or the response exceeded MaxFrameSize.
	CodeTooLarge = "too-large"
	// CodeDeadline: the handler gave up because the call's deadline (the
	// caller's, propagated, or the attempt timeout) passed; the caller sees
	// ErrTimeout. Not cached by deduplication: a retry runs the handler.
	CodeDeadline = "deadline-exceeded"
	// CodeInProgress: a retry found the first execution of its message ID
	// still running and stopped waiting for it (the caller's deadline
	// passed or it went away). Not retryable: the handler is running.
	CodeInProgress = "in-progress"
	// CodeBadRequest: a typed method (HandleTyped) could not decode the
	// request payload.
	CodeBadRequest = "bad-request"
)

// Is lets errors.Is match a RemoteError with code CodeUnavailable against
// ErrInstanceUnavailable, and one with CodeTooLarge against
// ErrMessageTooLarge.
func (e *RemoteError) Is(target error) bool {
	switch target {
	case ErrInstanceUnavailable:
		return e.Code == CodeUnavailable
	case ErrMessageTooLarge:
		return e.Code == CodeTooLarge
	}
	return false
}

// Retryable marks err so that CallWithFailover moves the call to another
// instance when a handler returns it. The caller sees a *RemoteError with
// Retryable set.
func Retryable(err error) error {
	if err == nil {
		return nil
	}
	return &RemoteError{Code: CodeHandler, Message: err.Error(), Retryable: true}
}

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

// Attempt records one try of a CallWithFailover (in FailoverError, and
// for WithAttemptObserver).
type Attempt struct {
	InstanceID string
	// Node is the node hosting the instance.
	Node string
	// Err is the try's error; nil for a successful try (reported only to
	// WithAttemptObserver).
	Err      error
	Duration time.Duration
	// Try counts the tries on this instance before this one: 0 for the
	// first, more for a same-instance retry with the same message ID.
	Try int
	// Hedge marks a hedged try (see Config.HedgeDelay), sent while an
	// earlier one was still unanswered.
	Hedge bool
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
