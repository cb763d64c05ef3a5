// Command metrics runs a small Aegis cluster on loopback with its metrics
// exported for Prometheus: four nodes, three of them hosting an instance of
// service "echo", the first one also calling it with CallWithFailover a
// hundred times a second. It serves /metrics (the OpenTelemetry Prometheus
// exporter) and the first node's admin endpoint under /admin/, and after
// -crash-after shuts one node down abruptly, so the failover, ejection and
// health panels of dashboard.json have something to show.
//
//	go run . -listen 127.0.0.1:9464
//	curl -s 127.0.0.1:9464/metrics | grep '^aegis_'
//	curl -s 127.0.0.1:9464/admin/services
//
// See README.md for Prometheus queries and the Grafana dashboard.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"

	"github.com/aegisipc/aegis"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:9464", "`host:port` serving /metrics and /admin/ (keep it on loopback: the admin endpoint has no authentication)")
	duration := flag.Duration("duration", 0, "stop after this long (0: until Ctrl-C)")
	crashAfter := flag.Duration("crash-after", 10*time.Second, "shut one serving node down abruptly after this long (0: never)")
	flag.Parse()
	d, err := start(*listen)
	if err != nil {
		log.Fatal(err)
	}
	defer d.close()
	fmt.Printf("metrics: %s/metrics\nadmin:   %s/admin/services (also /members, /health, /route?service=echo, /events)\n", d.URL, d.URL)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if *duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, *duration)
		defer cancel()
	}
	if *crashAfter > 0 {
		select {
		case <-ctx.Done():
		case <-time.After(*crashAfter):
			fmt.Println("crashing node-3: watch the failover, ejection and unhealthy-instance panels")
			d.crash()
		}
	}
	<-ctx.Done()
}

// demo is the running example.
type demo struct {
	URL   string // http://host:port serving /metrics and /admin/
	nodes []*aegis.Node
	mp    *sdkmetric.MeterProvider
	srv   *http.Server
	stop  chan struct{}
	wg    sync.WaitGroup
}

// start starts the cluster, the load and the HTTP server on addr.
func start(addr string) (*demo, error) {
	reg := prometheus.NewRegistry()
	exp, err := otelprom.New(otelprom.WithRegisterer(reg))
	if err != nil {
		return nil, err
	}
	d := &demo{mp: sdkmetric.NewMeterProvider(sdkmetric.WithReader(exp)), stop: make(chan struct{})}
	if err := d.startNodes(); err != nil {
		d.close()
		return nil, err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		d.close()
		return nil, err
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.Handle("/admin/", http.StripPrefix("/admin", aegis.AdminHandler(d.nodes[0])))
	d.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	d.URL = "http://" + ln.Addr().String()
	d.wg.Add(2)
	go func() { defer d.wg.Done(); _ = d.srv.Serve(ln) }()
	go func() { defer d.wg.Done(); d.load() }()
	return d, nil
}

// startNodes starts four nodes on loopback; node-0 reports its metrics to
// d.mp (in a real deployment every process has its own provider); nodes
// 0, 2 and 3 serve "echo" (node-3 is the one crash shuts down).
func (d *demo) startNodes() error {
	for i := range 4 {
		cfg := aegis.DefaultConfig()
		cfg.NodeName = fmt.Sprintf("node-%d", i)
		cfg.Gossip = aegis.LocalGossip()
		cfg.HeartbeatInterval, cfg.HeartbeatTimeout = 250*time.Millisecond, 1500*time.Millisecond
		cfg.AttemptTimeout = time.Second
		if i == 0 {
			cfg.MeterProvider = d.mp
		}
		n, err := aegis.New(cfg)
		if err != nil {
			return err
		}
		d.nodes = append(d.nodes, n)
		if i > 0 {
			if _, err := n.Join(context.Background(), d.nodes[0].Addr()); err != nil {
				return err
			}
		}
		if i != 1 {
			_, err := n.Register(context.Background(), aegis.Service{Name: "echo", InstanceID: fmt.Sprintf("echo-%d", i),
				Handler: func(_ context.Context, req *aegis.Request) ([]byte, error) { return req.Payload, nil }})
			if err != nil {
				return err
			}
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(d.nodes[0].HealthyInstances("echo")) < 3 {
		if time.Now().After(deadline) {
			return errors.New("echo instances not visible within 10s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	return nil
}

// load calls echo a hundred times a second from node-0 until d.stop.
func (d *demo) load() {
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-d.stop:
			return
		case <-t.C:
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			_, _ = d.nodes[0].CallWithFailover(ctx, "echo", "echo", []byte("ping"))
			cancel()
		}
	}
}

// crash shuts node-3 down abruptly, as a crash looks to the others.
func (d *demo) crash() { _ = d.nodes[3].Shutdown() }

// close stops everything.
func (d *demo) close() {
	close(d.stop)
	if d.srv != nil {
		_ = d.srv.Close()
	}
	d.wg.Wait()
	for _, n := range d.nodes {
		_ = n.Shutdown()
	}
	_ = d.mp.Shutdown(context.Background())
}
