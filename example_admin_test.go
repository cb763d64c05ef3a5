package aegis_test

import (
	"context"
	"fmt"
	"net/http/httptest"

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
	admin := aegis.AdminHandler(nodes[0], aegis.WithHealthyShare(0.8))
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
