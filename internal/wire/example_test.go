// Runnable example of decoding and validating a received gossip message.
package wire_test

import (
	"errors"
	"fmt"
	"math"

	"github.com/aegisipc/aegis/internal/wire"
)

// A node receiving gossip decodes it, validates it, and stores it only if
// both succeed. This heartbeat claims a sequence number near overflow.
func Example() {
	limits := wire.DefaultLimits()
	forged, _ := wire.Encode(&wire.HeartbeatBatch{Node: "node-02", Beats: []wire.Heartbeat{
		{Service: "billing", ID: "billing-1", Incarnation: 1, Seq: math.MaxUint64},
	}})

	msg, err := wire.DecodeLimited(forged, limits)
	if err == nil {
		err = msg.Validate(limits)
	}
	fmt.Println(errors.Is(err, wire.ErrInvalid))
	fmt.Println(err)
	// Output:
	// true
	// wire: invalid message: heartbeats from "node-02": Beats[0] "billing"/"billing-1": Seq 18446744073709551615: more than MaxSeq (4611686018427387904)
}
