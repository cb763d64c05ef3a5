package aegis_test

import (
	"context"
	"errors"
	"fmt"
	"net/http/httptest"
	"sync"

	"github.com/aegisipc/aegis"
)

// AdminHandler serves a node's view of the cluster as JSON. Mount it on
// an operators-only listener, behind your own authentication: it has none.
func ExampleAdminHandler() {
	ctx := context.Background()
	nodes, shutdown := exampleCluster(2)
	defer shutdown()
	reg, err := nodes[1].Register(ctx, aegis.Service{Name: "pricing", InstanceID: "pricing-1",
		Handler: func(context.Context, *aegis.Request) ([]byte, error) { return nil, nil }})
	if err != nil {
		panic(err)
	}
	waitUntil(func() bool { return len(nodes[0].HealthyInstances("pricing")) == 1 })

	// In a program: http.ListenAndServe("127.0.0.1:8080", yourAuth(aegis.AdminHandler(node)))
	admin := aegis.AdminHandlerWith(nodes[0], aegis.WithHealthyShare(0.8))
	get := func(path string) string {
		rec := httptest.NewRecorder()
		admin.ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
		return fmt.Sprint(rec.Code, " ", rec.Body.String())
	}
	fmt.Print(get("/health"))

	reg.SetStatus(aegis.StatusUnhealthy)
	waitUntil(func() bool { return len(nodes[0].HealthyInstances("pricing")) == 0 })
	fmt.Print(get("/health"))
	// Output:
	// 200 {
	//   "node": "node-0",
	//   "healthy": true,
	//   "known": 1,
	//   "healthy_instances": 1,
	//   "required_share": 0.8,
	//   "reason": "1 of 1 known instances healthy (at least 80% required)"
	// }
	// 503 {
	//   "node": "node-0",
	//   "healthy": false,
	//   "known": 1,
	//   "healthy_instances": 0,
	//   "required_share": 0.8,
	//   "reason": "only 0 of 1 known instances healthy (0%), below the required 80%"
	// }
}

// Route says which instance a call would reach and why; with
// ConsistentHash a key keeps its instance while membership holds.
func ExampleNode_Route() {
	ctx := context.Background()
	nodes, shutdown := exampleCluster(2, func(cfg *aegis.Config) { cfg.Balancer = aegis.ConsistentHash() })
	defer shutdown()
	for _, id := range []string{"carts-1", "carts-2", "carts-3"} {
		_, err := nodes[1].Register(ctx, aegis.Service{Name: "carts", InstanceID: id,
			Handler: func(context.Context, *aegis.Request) ([]byte, error) { return nil, nil }})
		if err != nil {
			panic(err)
		}
	}
	waitUntil(func() bool { return len(nodes[0].HealthyInstances("carts")) == 3 })

	r, err := nodes[0].Route("carts", "add", aegis.WithKey("customer-42"))
	if err != nil {
		panic(err)
	}
	again, _ := nodes[0].Route("carts", "add", aegis.WithKey("customer-42"))
	fmt.Println(r.Balancer, r.Candidates, r.Instance == again.Instance)
	fmt.Println(r.Reason)
	// Output:
	// consistent-hash [carts-1 carts-2 carts-3] true
	// owner of key "customer-42" on the hash ring among 3 healthy candidate(s)
}

// WithAttemptObserver shows how a call found its way: here the first
// instance tried is busy (a retryable error) and the call fails over.
func ExampleWithAttemptObserver() {
	ctx := context.Background()
	nodes, shutdown := exampleCluster(2)
	defer shutdown()
	for _, id := range []string{"jobs-busy", "jobs-ok"} {
		_, err := nodes[1].Register(ctx, aegis.Service{Name: "jobs", InstanceID: id,
			Handler: func(_ context.Context, req *aegis.Request) ([]byte, error) {
				if req.InstanceID == "jobs-busy" {
					return nil, aegis.Retryable(errors.New("busy"))
				}
				return []byte("done"), nil
			}})
		if err != nil {
			panic(err)
		}
	}
	waitUntil(func() bool { return len(nodes[0].HealthyInstances("jobs")) == 2 })

	var mu sync.Mutex
	var tries []string
	observe := func(a aegis.Attempt) {
		mu.Lock()
		defer mu.Unlock()
		tries = append(tries, fmt.Sprintf("%s on %s: %v", a.InstanceID, a.Node, a.Err))
	}
	// The round-robin balancer starts with the first instance by ID.
	out, err := nodes[0].CallWithFailover(ctx, "jobs", "run", nil, aegis.WithAttemptObserver(observe))
	fmt.Println(string(out), err)
	mu.Lock()
	defer mu.Unlock()
	for _, t := range tries {
		fmt.Println(t)
	}
	// Output:
	// done <nil>
	// jobs-busy on node-1: aegis: remote error handler: busy
	// jobs-ok on node-1: <nil>
}
