package aegishttp

import (
	"io"
	"net/http"
	"testing"
	"time"
)

// BenchmarkGet compares a GET through plain net/http to a static address
// with the same GET through Transport (the server registered as the only
// instance). go run ./overhead measures the same in one interleaved run
// with p50 and throughput.
func BenchmarkGet(b *testing.B) {
	node := newNode(b, time.Second)
	s := startServer(b, "s0")
	register(b, node, "s0", s.url)
	base := func() *http.Transport {
		t := http.DefaultTransport.(*http.Transport).Clone()
		t.MaxIdleConnsPerHost = 64
		return t
	}
	plain := &http.Client{Transport: base()}
	tr := New(node, WithBase(base()))
	b.Cleanup(tr.Close)
	viaAegis := &http.Client{Transport: tr}
	for _, c := range []struct {
		name, url string
		client    *http.Client
	}{{"plain", s.url + "/", plain}, {"aegis", "http://svc.aegis/", viaAegis}} {
		b.Run(c.name, func(b *testing.B) {
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					resp, err := c.client.Get(c.url)
					if err != nil {
						b.Error(err)
						return
					}
					_, _ = io.Copy(io.Discard, resp.Body)
					_ = resp.Body.Close()
				}
			})
		})
	}
}
