package aegis_test

import (
	"context"
	"fmt"
	"time"

	"github.com/aegisipc/aegis"
	"github.com/aegisipc/aegis/transport"
)

// Two nodes on the in-memory network: one hosts an instance, the other
// learns of it through gossip.
func ExampleNew() {
	ctx := context.Background()
	network := transport.NewNetwork()

	newNode := func(name, addr string) *aegis.Node {
		cfg := aegis.DefaultConfig()
		cfg.NodeName = name
		cfg.Transport = network.NewTransport(addr)
		cfg.Gossip = aegis.LocalGossip()
		n, err := aegis.New(cfg)
		if err != nil {
			panic(err)
		}
		return n
	}
	a := newNode("a", "10.0.0.1:7946")
	defer a.Shutdown()
	b := newNode("b", "10.0.0.2:7946")
	defer b.Shutdown()
	if _, err := b.Join(ctx, a.Addr()); err != nil {
		panic(err)
	}

	_, err := a.Register(ctx, aegis.Service{
		Name:       "greeter",
		InstanceID: "greeter-1",
		Handler: func(ctx context.Context, req *aegis.Request) ([]byte, error) {
			return []byte("hello"), nil
		},
	})
	if err != nil {
		panic(err)
	}
	for len(b.HealthyInstances("greeter")) == 0 {
		time.Sleep(10 * time.Millisecond)
	}
	for _, in := range b.HealthyInstances("greeter") {
		fmt.Println(in.ID, "on", in.Node, "is", in.Status)
	}
	// Output: greeter-1 on a is healthy
}

// Subscribe reports every change in this node's view of the cluster.
func ExampleNode_Subscribe() {
	ctx := context.Background()
	cfg := aegis.DefaultConfig()
	cfg.NodeName = "solo"
	cfg.Transport = transport.NewNetwork().NewTransport("10.0.0.1:7946")
	n, err := aegis.New(cfg)
	if err != nil {
		panic(err)
	}
	defer n.Shutdown()

	events := make(chan aegis.Event, 10)
	cancel := n.Subscribe(func(e aegis.Event) { events <- e })
	defer cancel()

	reg, err := n.Register(ctx, aegis.Service{Name: "jobs", InstanceID: "jobs-1",
		Handler: func(context.Context, *aegis.Request) ([]byte, error) { return nil, nil }})
	if err != nil {
		panic(err)
	}
	reg.SetStatus(aegis.StatusDraining)
	for i := 0; i < 2; i++ {
		e := <-events
		fmt.Println(e.Type, e.Instance.ID, e.NewStatus, e.Reason)
	}
	// Output:
	// registered jobs-1 healthy registered
	// status-changed jobs-1 draining self-reported
}
