// This file benchmarks call round trips over loopback TCP against raw TCP and net/rpc baselines.

package rpc

import (
	"bufio"
	"context"
	"encoding/binary"
	"io"
	"net"
	netrpc "net/rpc"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// parallelCallers is the number of concurrent callers in the parallel
// benchmarks (spread over GOMAXPROCS).
const parallelCallers = 64

// reportP50 reports the median, 90th and 99th percentile round trips of a
// single-caller benchmark (p50-ns, p90-ns, p99-ns). Run the benchmarks with
//
//	go test -run x -bench . -benchmem ./internal/rpc/
func reportP50(b *testing.B, lat []time.Duration) {
	if len(lat) == 0 {
		return
	}
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds()), "p50-ns")
	b.ReportMetric(float64(lat[len(lat)*9/10].Nanoseconds()), "p90-ns")
	b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds()), "p99-ns")
}

func setParallelCallers(b *testing.B) {
	p := parallelCallers / runtime.GOMAXPROCS(0)
	if p < 1 {
		p = 1
	}
	b.SetParallelism(p)
}

func BenchmarkRoundTripTCP(b *testing.B) {
	srv := startServer(b, netKinds[0], "", echoHandler, ServerOptions{})
	c := newTestClient(b, netKinds[0], ClientOptions{})
	req := &Request{Service: "svc", Method: "echo", InstanceID: "i-1", Payload: make([]byte, 64)}
	ctx := context.Background()
	_, err := c.Call(ctx, srv.addr, req) // connect
	require.NoError(b, err)

	lat := make([]time.Duration, b.N)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		resp, err := c.Call(ctx, srv.addr, req)
		lat[i] = time.Since(t0)
		if err != nil || len(resp.Payload) != 64 {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	reportP50(b, lat)
}

func BenchmarkRoundTripParallel(b *testing.B) {
	srv := startServer(b, netKinds[0], "", echoHandler, ServerOptions{})
	c := newTestClient(b, netKinds[0], ClientOptions{})
	_, err := c.Call(context.Background(), srv.addr, &Request{})
	require.NoError(b, err)

	b.ReportAllocs()
	b.SetBytes(1024)
	setParallelCallers(b)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		req := &Request{Service: "svc", Method: "echo", Payload: make([]byte, 1024)}
		ctx := context.Background()
		for pb.Next() {
			resp, err := c.Call(ctx, srv.addr, req)
			if err != nil || len(resp.Payload) != 1024 {
				b.Error(err)
				return
			}
		}
	})
}

// rawEchoServer echoes length-prefixed frames on every accepted connection
// until ln closes; wait for it with the returned WaitGroup.
func rawEchoServer(ln net.Listener) *sync.WaitGroup {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer conn.Close()
				br := bufio.NewReader(conn)
				buf := make([]byte, 4, 4096)
				for {
					buf = buf[:4]
					if _, err := io.ReadFull(br, buf); err != nil {
						return
					}
					n := int(binary.BigEndian.Uint32(buf))
					buf = slices.Grow(buf, n)[:4+n]
					if _, err := io.ReadFull(br, buf[4:]); err != nil {
						return
					}
					if _, err := conn.Write(buf); err != nil {
						return
					}
				}
			}()
		}
	}()
	return &wg
}

// rawEchoClient starts a raw TCP echo server on loopback and dials it; it
// returns the connection and a 64-byte length-prefixed frame to send.
// Both are closed when the benchmark ends.
func rawEchoClient(b *testing.B) (net.Conn, []byte) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(b, err)
	wg := rawEchoServer(ln)
	conn, err := net.Dial("tcp", ln.Addr().String())
	require.NoError(b, err)
	b.Cleanup(func() {
		_ = conn.Close()
		_ = ln.Close()
		wg.Wait()
	})
	frame := binary.BigEndian.AppendUint32(nil, 64)
	return conn, append(frame, make([]byte, 64)...)
}

// timeEchoes writes frame on conn b.N times, each time waiting with wait
// for the echo, and reports the p50 round trip.
func timeEchoes(b *testing.B, conn net.Conn, frame []byte, wait func() error) {
	lat := make([]time.Duration, b.N)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		if _, err := conn.Write(frame); err != nil {
			b.Fatal(err)
		}
		if err := wait(); err != nil {
			b.Fatal(err)
		}
		lat[i] = time.Since(t0)
	}
	b.StopTimer()
	reportP50(b, lat)
}

// BenchmarkRawTCPEcho is the floor: one caller writing a 64-byte
// length-prefixed frame and reading it back over loopback TCP.
func BenchmarkRawTCPEcho(b *testing.B) {
	conn, frame := rawEchoClient(b)
	in := make([]byte, len(frame))
	br := bufio.NewReader(conn)
	timeEchoes(b, conn, frame, func() error {
		_, err := io.ReadFull(br, in)
		return err
	})
}

// BenchmarkRawTCPEchoHandoff is BenchmarkRawTCPEcho with the response read
// by a separate goroutine and handed to the caller over a channel, the way
// a multiplexing client does. It isolates the cost of that one hand-off.
func BenchmarkRawTCPEchoHandoff(b *testing.B) {
	conn, frame := rawEchoClient(b)
	got := make(chan error, 1)
	readerDone := make(chan struct{})
	go func() {
		defer close(readerDone)
		in := make([]byte, len(frame))
		br := bufio.NewReader(conn)
		for {
			_, err := io.ReadFull(br, in)
			got <- err
			if err != nil {
				return
			}
		}
	}()
	b.Cleanup(func() { // runs before rawEchoClient's
		_ = conn.Close()
		<-readerDone
	})
	timeEchoes(b, conn, frame, func() error { return <-got })
}

// NetRPCEcho is the net/rpc service of the net/rpc baselines.
type NetRPCEcho struct{}

// Echo answers with its argument.
func (NetRPCEcho) Echo(args []byte, reply *[]byte) error {
	*reply = args
	return nil
}

func startNetRPC(b *testing.B) *netrpc.Client {
	srv := netrpc.NewServer()
	require.NoError(b, srv.RegisterName("Echo", NetRPCEcho{}))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(b, err)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, conn)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				srv.ServeConn(conn)
			}()
		}
	}()
	client, err := netrpc.Dial("tcp", ln.Addr().String())
	require.NoError(b, err)
	b.Cleanup(func() {
		_ = client.Close()
		_ = ln.Close()
		mu.Lock()
		for _, c := range conns {
			_ = c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return client
}

// BenchmarkNetRPCTCP is net/rpc (gob) with one caller and a 64-byte payload.
func BenchmarkNetRPCTCP(b *testing.B) {
	client := startNetRPC(b)
	args := make([]byte, 64)
	var reply []byte
	require.NoError(b, client.Call("Echo.Echo", args, &reply))

	lat := make([]time.Duration, b.N)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		if err := client.Call("Echo.Echo", args, &reply); err != nil {
			b.Fatal(err)
		}
		lat[i] = time.Since(t0)
	}
	b.StopTimer()
	reportP50(b, lat)
}

// BenchmarkNetRPCParallel is net/rpc with 64 callers and 1 KiB payloads.
func BenchmarkNetRPCParallel(b *testing.B) {
	client := startNetRPC(b)
	var reply []byte
	require.NoError(b, client.Call("Echo.Echo", []byte{}, &reply))
	b.ReportAllocs()
	b.SetBytes(1024)
	setParallelCallers(b)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		args := make([]byte, 1024)
		var reply []byte
		for pb.Next() {
			if err := client.Call("Echo.Echo", args, &reply); err != nil {
				b.Error(err)
				return
			}
		}
	})
}
