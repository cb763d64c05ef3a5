package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/rpc"
	"os"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"

	"github.com/aegisipc/aegis"
)

// callFn makes one echo call and returns the echoed payload. The returned
// slice may be reused by the next call on the same callFn.
type callFn func(ctx context.Context, payload []byte) ([]byte, error)

// system is one RPC stack under test: serve brings up its server and
// returns the address clients use; connect brings up the client side
// against that address. In the default mode both run in this process; with
// -split the server runs in a child process (this program with -serve).
type system struct {
	key     string // short name for -systems
	name    string // name in the report
	desc    string // how it is set up, for the report
	serve   func() (addr string, stop func(), err error)
	connect func(addr string) (*running, error)
}

// start brings s up inside this process; it is called once per round.
func (s system) start() (*running, error) {
	addr, stop, err := s.serve()
	if err != nil {
		return nil, err
	}
	r, err := s.connect(addr)
	if err != nil {
		stop()
		return nil, err
	}
	closeClient := r.close
	r.close = func() {
		closeClient()
		stop()
	}
	return r, nil
}

// running is a started system.
type running struct {
	// newCaller returns the call function one caller goroutine uses, and a
	// function releasing what newCaller opened (a connection, or nothing for
	// systems whose client is shared by all callers).
	newCaller func() (callFn, func(), error)
	close     func()
}

func noop() {}

var systems = []system{
	{
		key:     "tcp",
		name:    "raw TCP",
		desc:    "length-prefixed frames (4-byte big-endian length), bufio reader, one TCP connection per caller goroutine, one server goroutine per connection",
		serve:   serveRawTCP,
		connect: connectRawTCP,
	},
	{
		key:     "netrpc",
		name:    "net/rpc",
		desc:    "net/rpc (gob) over TCP, method Echo.Echo(args []byte, reply *[]byte), one rpc.Client shared by all callers",
		serve:   serveNetRPC,
		connect: connectNetRPC,
	},
	{
		key:     "grpc",
		name:    "grpc-go",
		desc:    "grpc-go " + grpcVersion + " unary, hand-written ServiceDesc /bench.Echo/Echo, pass-through []byte codec \"raw\" (encoding.CodecV2, selected with CallContentSubtype), insecure credentials, default options, one ClientConn shared by all callers",
		serve:   serveGRPC,
		connect: connectGRPC,
	},
	{
		key:     "grpctls",
		name:    "grpc-go, TLS",
		desc:    "same as grpc-go with TLS 1.3 transport credentials (an ed25519 certificate made at start, verified against its own pool; no client certificate)",
		serve:   serveGRPCTLS,
		connect: connectGRPCTLS,
	},
	{
		key:     "call",
		name:    "aegis Call",
		desc:    "two aegis nodes (DefaultConfig, BindAddr 127.0.0.1:0, LocalGossip) on the real network; node B registers service \"echo\" whose Handler returns req.Payload; node A joins B and calls A.Call(ctx, \"echo\", \"echo\", payload)",
		serve:   func() (string, func(), error) { return serveAegis(true) },
		connect: func(addr string) (*running, error) { return connectAegis(addr, false) },
	},
	{
		key:     "nodedup",
		name:    "aegis Call, dedup off",
		desc:    "same setup as aegis Call with Config.DedupMaxEntries = 0 on node B (no receiver-side dedup bookkeeping), to isolate its cost",
		serve:   func() (string, func(), error) { return serveAegis(false) },
		connect: func(addr string) (*running, error) { return connectAegis(addr, false) },
	},
	{
		key:     "failover",
		name:    "aegis CallWithFailover",
		desc:    "same setup as aegis Call, calls A.CallWithFailover(ctx, \"echo\", \"echo\", payload), no failures",
		serve:   func() (string, func(), error) { return serveAegis(true) },
		connect: func(addr string) (*running, error) { return connectAegis(addr, true) },
	},
	{
		key:     "calltls",
		name:    "aegis Call, TLS",
		desc:    "same setup as aegis Call with Config.SecretKey set on both nodes: gossip encrypted, calls over mutual TLS 1.3 with certificates derived from the key",
		serve:   func() (string, func(), error) { return serveAegisKeyed(benchKey) },
		connect: func(addr string) (*running, error) { return connectAegisKeyed(addr, benchKey) },
	},
}

// ---------------------------------------------------------------------------
// raw TCP echo

const maxRawFrame = 1 << 20

func serveRawTCP() (string, func(), error) {
	return serveTCP(func(c net.Conn) {
		serveRawConn(c)
		_ = c.Close()
	})
}

// serveTCP listens on a free loopback port and runs serve on its own
// goroutine for every connection accepted. stop closes the listener and
// every connection still open, and waits for the goroutines.
func serveTCP(serve func(net.Conn)) (addr string, stop func(), err error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	var mu sync.Mutex
	conns := map[net.Conn]struct{}{}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[c] = struct{}{}
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				serve(c)
				mu.Lock()
				delete(conns, c)
				mu.Unlock()
			}()
		}
	}()
	stop = func() {
		_ = ln.Close()
		mu.Lock()
		for c := range conns {
			_ = c.Close()
		}
		mu.Unlock()
		wg.Wait()
	}
	return ln.Addr().String(), stop, nil
}

func connectRawTCP(addr string) (*running, error) {
	return &running{
		newCaller: func() (callFn, func(), error) {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				return nil, nil, err
			}
			r := bufio.NewReaderSize(c, 32<<10)
			var out, in []byte
			hdr := make([]byte, 4)
			call := func(_ context.Context, payload []byte) ([]byte, error) {
				out = binary.BigEndian.AppendUint32(out[:0], uint32(len(payload)))
				out = append(out, payload...)
				if _, err := c.Write(out); err != nil {
					return nil, err
				}
				if _, err := io.ReadFull(r, hdr); err != nil {
					return nil, err
				}
				n := int(binary.BigEndian.Uint32(hdr))
				if n > maxRawFrame {
					return nil, fmt.Errorf("raw tcp: frame of %d bytes", n)
				}
				if cap(in) < n {
					in = make([]byte, n)
				}
				in = in[:n]
				if _, err := io.ReadFull(r, in); err != nil {
					return nil, err
				}
				return in, nil
			}
			return call, func() { _ = c.Close() }, nil
		},
		close: noop,
	}, nil
}

// serveRawConn echoes length-prefixed frames until the connection ends.
func serveRawConn(c net.Conn) {
	r := bufio.NewReaderSize(c, 32<<10)
	buf := make([]byte, 4, 4+2048)
	for {
		if _, err := io.ReadFull(r, buf[:4]); err != nil {
			return
		}
		n := int(binary.BigEndian.Uint32(buf[:4]))
		if n > maxRawFrame {
			return
		}
		if cap(buf) < 4+n {
			nb := make([]byte, 4+n)
			copy(nb, buf[:4])
			buf = nb
		}
		buf = buf[:4+n]
		if _, err := io.ReadFull(r, buf[4:]); err != nil {
			return
		}
		if _, err := c.Write(buf); err != nil {
			return
		}
	}
}

// ---------------------------------------------------------------------------
// net/rpc

// Echo is the net/rpc service.
type Echo struct{}

// Echo returns its argument.
func (Echo) Echo(args []byte, reply *[]byte) error {
	*reply = args
	return nil
}

func serveNetRPC() (string, func(), error) {
	srv := rpc.NewServer()
	if err := srv.RegisterName("Echo", Echo{}); err != nil {
		return "", nil, err
	}
	return serveTCP(func(c net.Conn) { srv.ServeConn(c) })
}

func connectNetRPC(addr string) (*running, error) {
	cl, err := rpc.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	call := func(_ context.Context, payload []byte) ([]byte, error) {
		var reply []byte
		if err := cl.Call("Echo.Echo", payload, &reply); err != nil {
			return nil, err
		}
		return reply, nil
	}
	return &running{
		newCaller: func() (callFn, func(), error) { return call, noop, nil },
		close:     func() { _ = cl.Close() },
	}, nil
}

// ---------------------------------------------------------------------------
// grpc-go

const grpcVersion = grpc.Version

// rawCodec passes []byte messages through unchanged: Marshal sends the
// caller's slice without copying; Unmarshal copies the received bytes out
// (gRPC frees its buffers when Unmarshal returns), as a protobuf decoder
// would.
type rawCodec struct{}

func (rawCodec) Name() string { return "raw" }

func (rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	switch b := v.(type) {
	case *[]byte:
		return mem.BufferSlice{mem.SliceBuffer(*b)}, nil
	case []byte:
		return mem.BufferSlice{mem.SliceBuffer(b)}, nil
	}
	return nil, fmt.Errorf("raw codec: cannot marshal %T", v)
}

func (rawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	p, ok := v.(*[]byte)
	if !ok {
		return fmt.Errorf("raw codec: cannot unmarshal into %T", v)
	}
	*p = data.Materialize()
	return nil
}

func init() { encoding.RegisterCodecV2(rawCodec{}) }

const grpcMethod = "/bench.Echo/Echo"

var echoServiceDesc = grpc.ServiceDesc{
	ServiceName: "bench.Echo",
	HandlerType: (*any)(nil),
	Methods: []grpc.MethodDesc{{
		MethodName: "Echo",
		Handler: func(_ any, ctx context.Context, dec func(any) error, ic grpc.UnaryServerInterceptor) (any, error) {
			in := new([]byte)
			if err := dec(in); err != nil {
				return nil, err
			}
			if ic == nil {
				return in, nil
			}
			return ic(ctx, in, &grpc.UnaryServerInfo{FullMethod: grpcMethod}, func(_ context.Context, req any) (any, error) {
				return req, nil
			})
		},
	}},
	Metadata: "bench/compare (hand-written, no protoc)",
}

func serveGRPC() (string, func(), error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	srv := grpc.NewServer()
	srv.RegisterService(&echoServiceDesc, struct{}{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(ln)
	}()
	stop := func() {
		srv.Stop()
		<-done
	}
	return ln.Addr().String(), stop, nil
}

func connectGRPC(addr string) (*running, error) {
	return connectGRPCWith(addr, insecure.NewCredentials())
}

// connectGRPCWith connects a grpc-go client with the given transport
// credentials.
func connectGRPCWith(addr string, creds credentials.TransportCredentials) (*running, error) {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		return nil, err
	}
	conn.Connect()
	opts := []grpc.CallOption{grpc.CallContentSubtype("raw")}
	call := func(ctx context.Context, payload []byte) ([]byte, error) {
		var reply []byte
		if err := conn.Invoke(ctx, grpcMethod, &payload, &reply, opts...); err != nil {
			return nil, err
		}
		return reply, nil
	}
	return &running{
		newCaller: func() (callFn, func(), error) { return call, noop, nil },
		close:     func() { _ = conn.Close() },
	}, nil
}

// ---------------------------------------------------------------------------
// aegis

// benchKey is the SecretKey of the TLS variant: fixed, so that a server in
// a child process (-split) has it too.
var benchKey = []byte("aegis-compare-benchmark-key-0001")

func newAegisNode(name string, dedup bool, key ...[]byte) (*aegis.Node, error) {
	return newAegisNodeWith(name, dedup, nil, key...)
}

// newAegisNodeWith is newAegisNode with tune applied to the Config last
// (nil: nothing).
func newAegisNodeWith(name string, dedup bool, tune func(*aegis.Config), key ...[]byte) (*aegis.Node, error) {
	cfg := aegis.DefaultConfig()
	if len(key) > 0 {
		cfg.SecretKey = key[0]
	}
	if !dedup {
		cfg.DedupMaxEntries = 0
	}
	cfg.NodeName = name
	cfg.BindAddr = "127.0.0.1:0"
	cfg.Gossip = aegis.LocalGossip()
	if tune != nil {
		tune(cfg)
	}
	return aegis.New(cfg)
}

var aegisSeq int

// startEchoNode starts an aegis node (named after role) with an echo
// instance of service.
func startEchoNode(role, service string, dedup bool, key ...[]byte) (*aegis.Node, error) {
	aegisSeq++
	nd, err := newAegisNode(fmt.Sprintf("bench-%s-%d-%d", role, os.Getpid(), aegisSeq), dedup, key...)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err = nd.Register(ctx, aegis.Service{
		Name: service,
		Handler: func(_ context.Context, req *aegis.Request) ([]byte, error) {
			return req.Payload, nil
		},
	})
	if err != nil {
		_ = nd.Shutdown()
		return nil, fmt.Errorf("register %q on %s: %w", service, role, err)
	}
	return nd, nil
}

// startCaller starts the calling node A, joins the nodes at addrs and waits
// until A sees one healthy instance of each service.
func startCaller(addrs []string, services ...string) (*aegis.Node, error) {
	return startKeyedCaller(nil, addrs, services...)
}

// startKeyedCaller is startCaller with a SecretKey (nil: none).
func startKeyedCaller(key []byte, addrs []string, services ...string) (*aegis.Node, error) {
	return startTunedCaller(key, nil, addrs, services...)
}

// startTunedCaller is startKeyedCaller with tune applied to the caller's
// Config (nil: nothing).
func startTunedCaller(key []byte, tune func(*aegis.Config), addrs []string, services ...string) (*aegis.Node, error) {
	aegisSeq++
	var keys [][]byte
	if key != nil {
		keys = append(keys, key)
	}
	a, err := newAegisNodeWith(fmt.Sprintf("bench-a-%d-%d", os.Getpid(), aegisSeq), true, tune, keys...)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := a.Join(ctx, addrs...); err != nil {
		_ = a.Shutdown()
		return nil, err
	}
	for _, svc := range services {
		for len(a.HealthyInstances(svc)) != 1 {
			if ctx.Err() != nil {
				_ = a.Shutdown()
				return nil, fmt.Errorf("aegis: node A did not see a healthy %q instance within 30s", svc)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	return a, nil
}

// serveAegis starts node B with an echo instance and returns its gossip
// address.
func serveAegis(dedup bool) (string, func(), error) {
	b, err := startEchoNode("b", "echo", dedup)
	if err != nil {
		return "", nil, err
	}
	return b.Addr(), func() { _ = b.Shutdown() }, nil
}

// connectAegis starts node A, joins B at addr and calls B's instance.
func connectAegis(addr string, failover bool) (*running, error) {
	a, err := startCaller([]string{addr}, "echo")
	if err != nil {
		return nil, err
	}
	stop := func() { _ = a.Shutdown() }
	var call callFn
	if failover {
		call = func(ctx context.Context, payload []byte) ([]byte, error) {
			return a.CallWithFailover(ctx, "echo", "echo", payload)
		}
	} else {
		call = func(ctx context.Context, payload []byte) ([]byte, error) {
			return a.Call(ctx, "echo", "echo", payload)
		}
	}
	return &running{
		newCaller: func() (callFn, func(), error) { return call, noop, nil },
		close:     stop,
	}, nil
}

// serveAegisKeyed is serveAegis with a SecretKey.
func serveAegisKeyed(key []byte) (string, func(), error) {
	b, err := startEchoNode("b", "echo", true, key)
	if err != nil {
		return "", nil, err
	}
	return b.Addr(), func() { _ = b.Shutdown() }, nil
}

// connectAegisKeyed is connectAegis (Call) with a SecretKey.
func connectAegisKeyed(addr string, key []byte) (*running, error) {
	a, err := startKeyedCaller(key, []string{addr}, "echo")
	if err != nil {
		return nil, err
	}
	call := func(ctx context.Context, payload []byte) ([]byte, error) {
		return a.Call(ctx, "echo", "echo", payload)
	}
	return &running{
		newCaller: func() (callFn, func(), error) { return call, noop, nil },
		close:     func() { _ = a.Shutdown() },
	}, nil
}
