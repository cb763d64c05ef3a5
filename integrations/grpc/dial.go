// This file holds Dial, its options and the interceptors that let a
// retried RPC prefer another instance.

package aegisgrpc

import (
	"context"
	"fmt"
	"strings"

	"google.golang.org/grpc"

	"github.com/aegisipc/aegis"
)

// Option configures Dial and NewBuilder.
type Option func(*options)

type options struct {
	hashKey     string
	maxAttempts int
	dialOpts    []grpc.DialOption
}

func defaultOptions() options { return options{maxAttempts: 3} }

func (o options) balancer() aegis.Balancer {
	if o.hashKey != "" {
		return aegis.ConsistentHash()
	}
	return aegis.RoundRobin()
}

// WithHashKey spreads RPCs by consistent hash of the value of outgoing
// metadata key (lower case, e.g. "x-user-id") instead of round robin: RPCs
// with the same value go to the same instance, in every process (the ring
// is aegis.ConsistentHash). RPCs without the key are spread at random.
func WithHashKey(key string) Option {
	return func(o *options) { o.hashKey = strings.ToLower(key) }
}

// WithMaxAttempts sets the maxAttempts of the retry policy Dial puts in
// the default service config: an RPC that fails with Unavailable is tried
// again, on another instance when there is one, up to n attempts in all
// (grpc-go caps it at 5). Default 3; 1 or less turns retries off. Only use
// it for services whose methods are safe to run twice.
func WithMaxAttempts(n int) Option {
	return func(o *options) { o.maxAttempts = n }
}

// WithDialOptions adds grpc dial options (transport credentials, another
// default service config, interceptors, ...); they are applied after
// Dial's own, so they win.
func WithDialOptions(opts ...grpc.DialOption) Option {
	return func(o *options) { o.dialOpts = append(o.dialOpts, opts...) }
}

// Dial returns a grpc.ClientConn to service as node sees it: target
// "aegis:///SERVICE", this package's resolver and balancer, and a default
// service config retrying Unavailable RPCs (WithMaxAttempts). Like
// grpc.NewClient it does not connect until the first RPC. Pass transport
// credentials with WithDialOptions (for example
// grpc.WithTransportCredentials(insecure.NewCredentials())).
func Dial(node *aegis.Node, service string, opts ...Option) (*grpc.ClientConn, error) {
	o := defaultOptions()
	for _, f := range opts {
		f(&o)
	}
	b := &Builder{node: node, opts: o}
	all := append([]grpc.DialOption{
		grpc.WithResolvers(b),
		grpc.WithDefaultServiceConfig(ServiceConfig(o.maxAttempts)),
		grpc.WithChainUnaryInterceptor(UnaryInterceptor),
		grpc.WithChainStreamInterceptor(StreamInterceptor),
	}, o.dialOpts...)
	return grpc.NewClient(Scheme+":///"+service, all...)
}

// ServiceConfig returns a service config JSON selecting the "aegis"
// balancer and, when maxAttempts > 1, a retry policy for every method:
// Unavailable RPCs retried up to maxAttempts attempts (at most 5) after
// 5-50 ms backoffs.
func ServiceConfig(maxAttempts int) string {
	lb := `"loadBalancingConfig":[{"` + BalancerName + `":{}}]`
	if maxAttempts <= 1 {
		return "{" + lb + "}"
	}
	return fmt.Sprintf(`{%s,"methodConfig":[{"name":[{}],"retryPolicy":{"maxAttempts":%d,`+
		`"initialBackoff":"0.005s","maxBackoff":"0.05s","backoffMultiplier":2,`+
		`"retryableStatusCodes":["UNAVAILABLE"]}}]}`, lb, min(maxAttempts, 5))
}

// UnaryInterceptor gives each RPC a record of the instances its attempts
// went to, so that the picker sends a retry elsewhere. Dial installs it.
func UnaryInterceptor(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn,
	invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	return invoker(withTried(ctx), method, req, reply, cc, opts...)
}

// StreamInterceptor is UnaryInterceptor for streams.
func StreamInterceptor(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string,
	streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	return streamer(withTried(ctx), desc, cc, method, opts...)
}

// withTried returns ctx with a new, empty triedSet.
func withTried(ctx context.Context) context.Context {
	t := &triedSet{Context: ctx}
	t.ids = t.buf[:0]
	return t
}
