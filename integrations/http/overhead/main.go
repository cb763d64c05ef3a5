// Command overhead measures what aegishttp costs against plain net/http
// with a static address: the same GET to the same loopback server, once
// through an http.Client to http://127.0.0.1:PORT/ and once through
// aegishttp.Transport to http://echo.aegis/ with the server registered as
// the only instance; a third time with WithAttemptTimeout(5s) (the
// per-attempt timer), and a fourth through a second plain client, a
// control whose difference from the first is noise. All use an
// http.Transport with the same settings. The variants take turns in one
// run, every 64 sequential requests for latency (p50) and every 50 ms for
// throughput (concurrent callers), each going first in turn, so that the
// drift of a shared machine hits them alike.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/aegisipc/aegis"
	aegishttp "github.com/aegisipc/aegis/integrations/http"

	"github.com/aegisipc/aegis/internal/overhead"
)

func main() {
	rounds := flag.Int("rounds", 10, "measurement rounds")
	calls := flag.Int("calls", 2000, "sequential requests per variant per round (latency)")
	phase := flag.Duration("tput", 2*time.Second, "throughput time per variant per round")
	conc := flag.Int("conc", 8, "concurrent callers (throughput)")
	flag.Parse()
	if err := run(*rounds, *calls, *phase, *conc); err != nil {
		fmt.Fprintln(os.Stderr, "overhead:", err)
		os.Exit(1)
	}
}

func baseTransport() *http.Transport {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConnsPerHost = 64
	return t
}

func run(rounds, calls int, phase time.Duration, conc int) error {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok") })}
	go func() { _ = srv.Serve(lis) }()
	defer srv.Close()

	cfg := aegis.DefaultConfig()
	cfg.BindAddr = "127.0.0.1:0"
	cfg.Gossip = aegis.LocalGossip()
	node, err := aegis.New(cfg)
	if err != nil {
		return err
	}
	defer node.Shutdown()
	if _, err := node.Register(context.Background(), aegis.Service{Name: "echo", InstanceID: "echo-1",
		Endpoints: map[string]string{"http": "http://" + lis.Addr().String()}}); err != nil {
		return err
	}
	plainT, controlT := baseTransport(), baseTransport()
	defer plainT.CloseIdleConnections()
	defer controlT.CloseIdleConnections()
	tr := aegishttp.New(node, aegishttp.WithBase(baseTransport()))
	defer tr.Close()
	tr0 := aegishttp.New(node, aegishttp.WithBase(baseTransport()), aegishttp.WithAttemptTimeout(5*time.Second))
	defer tr0.Close()
	vs := []overhead.Variant{
		{Name: "net/http, static address", Call: getter(&http.Client{Transport: plainT}, "http://"+lis.Addr().String()+"/")},
		{Name: "aegishttp.Transport", Call: getter(&http.Client{Transport: tr}, "http://echo.aegis/")},
		{Name: "aegishttp, attempt timer 5s", Call: getter(&http.Client{Transport: tr0}, "http://echo.aegis/")},
		{Name: "net/http again (control)", Call: getter(&http.Client{Transport: controlT}, "http://"+lis.Addr().String()+"/")},
	}
	return overhead.Measure(vs, rounds, calls, phase, conc)
}

// getter returns one GET of url that reads the whole answer.
func getter(c *http.Client, url string) func() error {
	return func() error {
		resp, err := c.Get(url)
		if err != nil {
			return err
		}
		_, err = io.Copy(io.Discard, resp.Body)
		_ = resp.Body.Close()
		if err == nil && resp.StatusCode != http.StatusOK {
			err = fmt.Errorf("status %s", resp.Status)
		}
		return err
	}
}
