package aegis_test

import (
	"context"
	"errors"
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
	waitUntil(func() bool { return len(b.HealthyInstances("greeter")) > 0 })
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

// exampleCluster starts n nodes on one in-memory network, all joined to the
// first, and returns them with a function that shuts them all down.
func exampleCluster(n int, opts ...func(*aegis.Config)) ([]*aegis.Node, func()) {
	network := transport.NewNetwork()
	var nodes []*aegis.Node
	for i := 0; i < n; i++ {
		cfg := aegis.DefaultConfig()
		cfg.NodeName = fmt.Sprintf("node-%d", i)
		cfg.Transport = network.NewTransport(fmt.Sprintf("10.0.0.%d:7946", i+1))
		cfg.Gossip = aegis.LocalGossip()
		for _, o := range opts {
			o(cfg)
		}
		nd, err := aegis.New(cfg)
		if err != nil {
			panic(err)
		}
		if i > 0 {
			if _, err := nd.Join(context.Background(), nodes[0].Addr()); err != nil {
				panic(err)
			}
		}
		nodes = append(nodes, nd)
	}
	return nodes, func() {
		for _, nd := range nodes {
			_ = nd.Shutdown()
		}
	}
}

// CallWithFailover calls a healthy instance and moves to another when one
// is unavailable. Here one of two instances has crashed; the call still
// succeeds, and every retry carries the same message ID.
func ExampleNode_CallWithFailover() {
	ctx := context.Background()
	nodes, shutdown := exampleCluster(3)
	defer shutdown()

	for i, nd := range nodes[1:] {
		_, err := nd.Register(ctx, aegis.Service{
			Name:       "pricing",
			InstanceID: fmt.Sprintf("pricing-%d", i+1),
			Handler: func(ctx context.Context, req *aegis.Request) ([]byte, error) {
				return []byte("42.00 for " + string(req.Payload)), nil
			},
		})
		if err != nil {
			panic(err)
		}
	}
	waitUntil(func() bool { return len(nodes[0].HealthyInstances("pricing")) == 2 })

	_ = nodes[1].Shutdown() // a crash: node-0 still lists pricing-1 for now

	for i := 0; i < 2; i++ {
		out, err := nodes[0].CallWithFailover(ctx, "pricing", "quote", []byte("sku-7"),
			aegis.WithMessageID(fmt.Sprintf("order-%d", i)))
		if err != nil {
			panic(err)
		}
		fmt.Println(string(out))
	}
	// Output:
	// 42.00 for sku-7
	// 42.00 for sku-7
}

// Invoke and HandleTyped carry Go values (encoded with msgpack) instead of
// bytes; a Mux routes each method to its function.
func ExampleInvoke() {
	ctx := context.Background()
	nodes, shutdown := exampleCluster(2)
	defer shutdown()

	type AddReq struct{ A, B int }
	type AddResp struct{ Sum int }
	mux := aegis.NewMux()
	aegis.HandleTyped(mux, "add", func(ctx context.Context, req AddReq) (AddResp, error) {
		return AddResp{Sum: req.A + req.B}, nil
	})
	if _, err := nodes[1].Register(ctx, aegis.Service{Name: "calc", Handler: mux.Handler()}); err != nil {
		panic(err)
	}
	waitUntil(func() bool { return len(nodes[0].HealthyInstances("calc")) > 0 })

	resp, err := aegis.Invoke[AddReq, AddResp](ctx, nodes[0], "calc", "add", AddReq{A: 2, B: 3})
	if err != nil {
		panic(err)
	}
	fmt.Println(resp.Sum)

	_, err = aegis.Invoke[AddReq, AddResp](ctx, nodes[0], "calc", "subtract", AddReq{})
	var re *aegis.RemoteError
	fmt.Println(errors.As(err, &re), re.Code)
	// Output:
	// 5
	// true unknown-method
}

// waitUntil polls cond until it holds, and panics (failing the example)
// after ten seconds.
func waitUntil(cond func() bool) {
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			panic("example: condition not met within 10s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Keys rotates the cluster's SecretKey without downtime: install the new
// key everywhere, switch every node to it, then remove the old one. Each
// step reports every node's answer.
func ExampleNode_Keys() {
	ctx := context.Background()
	oldKey, newKey := aegis.NewSecretKey(), aegis.NewSecretKey()
	nodes, shutdown := exampleCluster(3, func(c *aegis.Config) { c.SecretKey = oldKey })
	defer shutdown()
	waitUntil(func() bool { return len(nodes[0].Members()) == 3 })

	keys := nodes[0].Keys()
	for _, step := range []func() (*aegis.KeyResponse, error){
		func() (*aegis.KeyResponse, error) { return keys.InstallKey(ctx, newKey) },
		func() (*aegis.KeyResponse, error) { return keys.UseKey(ctx, newKey) },
		func() (*aegis.KeyResponse, error) { return keys.RemoveKey(ctx, oldKey) },
	} {
		resp, err := step()
		if err != nil {
			panic(err)
		}
		fmt.Println(len(resp.Nodes), "nodes answered,", len(resp.Failed()), "failed")
	}
	list, err := keys.ListKeys(ctx)
	if err != nil {
		panic(err)
	}
	fmt.Println("nodes using the new key:", list.PrimaryKeys[aegis.KeyFingerprint(newKey)])
	// Output:
	// 3 nodes answered, 0 failed
	// 3 nodes answered, 0 failed
	// 3 nodes answered, 0 failed
	// nodes using the new key: 3
}

// An active and a standby of one role group: calls reach only the active;
// when it is deregistered, the standby is promoted with the next epoch,
// which its handler sees as a fencing token.
func ExampleNode_Roles() {
	ctx := context.Background()
	cfg := aegis.DefaultConfig()
	cfg.NodeName = "solo"
	cfg.Transport = transport.NewNetwork().NewTransport("10.0.0.1:7946")
	cfg.RoleLeaseTimeout = 200 * time.Millisecond
	n, err := aegis.New(cfg)
	if err != nil {
		panic(err)
	}
	defer n.Shutdown()

	member := func(id string, role aegis.Role) *aegis.Registration {
		reg, err := n.Register(ctx, aegis.Service{Name: "ledger", InstanceID: id, Role: role,
			Handler: func(_ context.Context, req *aegis.Request) ([]byte, error) {
				return fmt.Appendf(nil, "%s at epoch %d", id, req.Epoch), nil
			}})
		if err != nil {
			panic(err)
		}
		return reg
	}
	primary := member("ledger-a", aegis.RoleActive)
	member("ledger-b", aegis.RoleStandby)

	call := func() string {
		ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		out, err := n.CallWithFailover(ctx, "ledger", "get", nil)
		if err != nil {
			panic(err)
		}
		return string(out)
	}
	fmt.Println(call())
	_ = primary.Deregister(ctx)
	fmt.Println(call()) // waits for the promotion
	v := n.Roles("ledger")[0]
	fmt.Println("active:", v.Active.ID, "epoch:", v.Epoch, "mode:", v.Mode)
	// Output:
	// ledger-a at epoch 1
	// ledger-b at epoch 2
	// active: ledger-b epoch: 2 mode: majority
}

// Resources: an instance claims IDs, and calls WithResource reach the owner.
func ExampleRegistration_Claim() {
	ctx := context.Background()
	cfg := aegis.DefaultConfig()
	cfg.NodeName = "solo"
	cfg.Transport = transport.NewNetwork().NewTransport("10.0.0.1:7946")
	n, err := aegis.New(cfg)
	if err != nil {
		panic(err)
	}
	defer n.Shutdown()
	register := func(id string) *aegis.Registration {
		reg, err := n.Register(ctx, aegis.Service{Name: "orders", InstanceID: id,
			Handler: func(context.Context, *aegis.Request) ([]byte, error) { return []byte(id), nil }})
		if err != nil {
			panic(err)
		}
		return reg
	}
	a, b := register("orders-a"), register("orders-b")
	if err := b.Claim(ctx, "order-17", "order-18"); err != nil {
		panic(err)
	}
	out, _ := n.Call(ctx, "orders", "get", nil, aegis.WithResource("order-17"))
	fmt.Println("order-17 is served by", string(out))

	err = a.Claim(ctx, "order-17", "bad id")
	var ce *aegis.ClaimError
	if errors.As(err, &ce) {
		fmt.Println(errors.Is(ce.Failed["order-17"], aegis.ErrResourceClaimed), errors.Is(ce.Failed["bad id"], aegis.ErrInvalidResource))
	}
	if err := a.Transfer(ctx, "order-17"); err != nil {
		panic(err)
	}
	owner, _ := n.Owner("order-17")
	fmt.Println("now owned by", owner.ID)
	// Output:
	// order-17 is served by orders-b
	// true true
	// now owned by orders-a
}
