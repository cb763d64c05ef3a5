// This file holds the key manager: cluster-wide rotation of SecretKey
// (install, use, remove, list), each step asked of every member over its
// call port, with a reply per node.

package aegis

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"

	"github.com/aegisipc/aegis/internal/rpc"
)

// ErrKeyManagement: a key operation failed on at least one node, or the
// node has no keyring (it runs without SecretKey). The KeyResponse says
// which nodes failed and why.
var ErrKeyManagement = errors.New("aegis: key operation failed")

// keysService is the internal service key operations are sent to. A ':'
// is not allowed in service names, so no registered instance can take it.
const keysService = "aegis:keys"

// Key operations, as methods of keysService.
const (
	keyInstall = "install"
	keyUse     = "use"
	keyRemove  = "remove"
	keyList    = "list"
)

// KeyManager rotates the cluster's gossip and call key without downtime:
// InstallKey(new) on every node, then UseKey(new) (every node encrypts
// gossip with it and presents a certificate derived from it, while still
// accepting the old one), then RemoveKey(old). Each call asks every live
// member, this node included, over its call port (authenticated by the
// current keys), and reports each node's answer. Calls and gossip flow
// throughout. A node that joins between two steps, or is unreachable
// during one, must be given the keys in its Config or by repeating the
// step.
type KeyManager struct{ n *Node }

// Keys returns the node's key manager.
func (n *Node) Keys() *KeyManager { return &KeyManager{n: n} }

// KeyResponse is the outcome of one key operation across the cluster.
type KeyResponse struct {
	// Nodes maps every member asked to its answer: "" for success,
	// otherwise the error.
	Nodes map[string]string
	// Keys maps the fingerprint (KeyFingerprint) of every key installed
	// anywhere to how many nodes have it; ListKeys only.
	Keys map[string]int
	// PrimaryKeys maps the fingerprint of every primary key to how many
	// nodes use it; ListKeys only.
	PrimaryKeys map[string]int
}

// Failed returns the names of the nodes whose answer was an error, sorted.
func (r *KeyResponse) Failed() []string {
	var out []string
	for name, msg := range r.Nodes {
		if msg != "" {
			out = append(out, name)
		}
	}
	sort.Strings(out)
	return out
}

// KeyFingerprint identifies a key without revealing it: the first 8 bytes
// of its SHA-256, in hex. Key listings carry fingerprints, never keys.
func KeyFingerprint(key []byte) string {
	sum := sha256.Sum256(key)
	return hex.EncodeToString(sum[:8])
}

// InstallKey adds key to every node's keyring; gossip and calls still use
// the current primary key.
func (k *KeyManager) InstallKey(ctx context.Context, key []byte) (*KeyResponse, error) {
	if err := checkKey(key); err != nil {
		return nil, err
	}
	return k.everyNode(ctx, keyInstall, key)
}

// UseKey makes key, already installed, the primary key of every node.
func (k *KeyManager) UseKey(ctx context.Context, key []byte) (*KeyResponse, error) {
	if err := checkKey(key); err != nil {
		return nil, err
	}
	return k.everyNode(ctx, keyUse, key)
}

// RemoveKey removes key from every node's keyring. A node refuses to
// remove its primary key.
func (k *KeyManager) RemoveKey(ctx context.Context, key []byte) (*KeyResponse, error) {
	if err := checkKey(key); err != nil {
		return nil, err
	}
	return k.everyNode(ctx, keyRemove, key)
}

// ListKeys reports the keys every node has, by fingerprint.
func (k *KeyManager) ListKeys(ctx context.Context) (*KeyResponse, error) {
	return k.everyNode(ctx, keyList, nil)
}

func checkKey(key []byte) error {
	switch len(key) {
	case 16, 24, 32:
		return nil
	}
	return fmt.Errorf("%w: a key is 16, 24 or 32 bytes, got %d", ErrKeyManagement, len(key))
}

// everyNode runs op on every live member at once and gathers the answers.
func (k *KeyManager) everyNode(ctx context.Context, op string, key []byte) (*KeyResponse, error) {
	n := k.n
	if n.keyring == nil {
		return nil, fmt.Errorf("%w: this node runs without SecretKey, so there is no keyring to change", ErrKeyManagement)
	}
	if n.state.Load() != stateRunning {
		return nil, ErrShutdown
	}
	members := n.gossip.members()
	answers := make([]keyAnswer, len(members))
	var wg sync.WaitGroup
	for i, m := range members {
		wg.Add(1)
		go func() {
			defer wg.Done()
			answers[i] = n.keyOpOn(ctx, m, op, key)
		}()
	}
	wg.Wait()
	resp := &KeyResponse{Nodes: make(map[string]string, len(members))}
	if op == keyList {
		resp.Keys, resp.PrimaryKeys = map[string]int{}, map[string]int{}
	}
	for i, m := range members {
		a := answers[i]
		resp.Nodes[m.name] = a.err
		if a.err == "" && op == keyList {
			resp.PrimaryKeys[a.primary]++
			for _, fp := range a.keys {
				resp.Keys[fp]++
			}
		}
	}
	if failed := resp.Failed(); len(failed) > 0 {
		return resp, fmt.Errorf("%w: %s on %d of %d nodes (%s: %s)", ErrKeyManagement, op, len(failed), len(members), failed[0], resp.Nodes[failed[0]])
	}
	return resp, nil
}

// keyAnswer is one node's answer: err empty on success; for a listing the
// fingerprints of its primary and installed keys.
type keyAnswer struct {
	err     string
	primary string
	keys    []string
}

// keyOpOn runs op on member m: locally for this node, else by a call.
func (n *Node) keyOpOn(ctx context.Context, m member, op string, key []byte) keyAnswer {
	if m.name == n.name {
		out, err := n.applyKeyOp(op, key)
		return parseKeyAnswer(out, err)
	}
	if m.callAddr == "" {
		return keyAnswer{err: "its call address is unknown"}
	}
	ctx, cancel := context.WithTimeout(ctx, n.cfg.AttemptTimeout)
	defer cancel()
	resp, err := n.caller.client.Call(ctx, m.callAddr, &rpc.Request{Service: keysService, Method: op, InstanceID: m.name,
		Payload: key, Timeout: n.cfg.AttemptTimeout})
	if err == nil && resp.Err != nil {
		err = errors.New(resp.Err.Message)
	}
	return parseKeyAnswer(resp.Payload, err)
}

func parseKeyAnswer(out []byte, err error) keyAnswer {
	if err != nil {
		return keyAnswer{err: err.Error()}
	}
	fps := strings.Fields(string(out))
	if len(fps) == 0 {
		return keyAnswer{}
	}
	return keyAnswer{primary: fps[0], keys: fps[1:]}
}

// serveKeys answers a key operation from another member. Only connections
// authenticated by the cluster's TLS reach it.
func (n *Node) serveKeys(req *rpc.Request) rpc.Response {
	if n.creds == nil || n.keyring == nil {
		return rpc.Response{Err: &rpc.ErrorInfo{Code: CodeUnavailable, Message: fmt.Sprintf("node %s has no keyring (no SecretKey)", n.name)}}
	}
	if req.InstanceID != n.name {
		return rpc.Response{Err: &rpc.ErrorInfo{Code: CodeUnavailable, Message: fmt.Sprintf("key operation meant for %s reached %s", req.InstanceID, n.name)}}
	}
	out, err := n.applyKeyOp(req.Method, req.Payload)
	if err != nil {
		return rpc.Response{Err: &rpc.ErrorInfo{Code: CodeHandler, Message: err.Error()}}
	}
	return rpc.Response{Payload: out}
}

// applyKeyOp changes or lists this node's keyring. A listing is the
// primary key's fingerprint, then every installed key's, space-separated.
func (n *Node) applyKeyOp(op string, key []byte) ([]byte, error) {
	var err error
	switch op {
	case keyInstall:
		err = n.keyring.AddKey(key)
	case keyUse:
		err = n.keyring.UseKey(key)
	case keyRemove:
		err = n.keyring.RemoveKey(key)
	case keyList:
		fps := []string{KeyFingerprint(n.keyring.GetPrimaryKey())}
		for _, k := range n.keyring.GetKeys() {
			fps = append(fps, KeyFingerprint(k))
		}
		return []byte(strings.Join(fps, " ")), nil
	default:
		return nil, fmt.Errorf("unknown key operation %q", op)
	}
	if err != nil {
		return nil, err
	}
	n.log.Info("keyring changed", "op", op, "key", KeyFingerprint(key))
	return nil, nil
}
