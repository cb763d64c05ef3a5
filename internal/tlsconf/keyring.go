// This file follows a keyring that changes at run time: it keeps the CA of
// every installed key, the pool that trusts them and this node's
// certificate for the primary key, and rebuilds them when the keys change.

package tlsconf

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"sync"
	"time"
)

// keyState is what one set of keys yields. It is immutable once published.
type keyState struct {
	primary []byte
	all     [][]byte // primary first, no duplicates
	pool    *x509.CertPool
	leaf    *tls.Certificate // this node's, signed by the primary key's CA
}

// matches reports whether s was built from primary and all: the same
// primary, and the same set of keys once the primary is counted in.
func (s *keyState) matches(primary []byte, all [][]byte) bool {
	if !bytes.Equal(s.primary, primary) {
		return false
	}
	for _, k := range all {
		if len(k) > 0 && !containsKey(s.all, k) {
			return false
		}
	}
	for _, k := range s.all[1:] {
		if !containsKey(all, k) {
			return false
		}
	}
	return true
}

func containsKey(keys [][]byte, k []byte) bool {
	for _, x := range keys {
		if bytes.Equal(x, k) {
			return true
		}
	}
	return false
}

// keyring derives credentials from the keys a function reports.
type keyring struct {
	node string
	keys func() (primary []byte, all [][]byte)
	now  func() time.Time

	mu  sync.Mutex            // guards cas and cur
	cas map[string]*authority // by key; only keys of cur
	cur *keyState             // nil until the first handshake or refresh
}

var errNoPrimary = errors.New("aegis: the keyring has no primary key")

// state returns the credentials for the keys installed now, building them
// if the keys changed or this node's certificate is due to be minted again.
func (r *keyring) state() (*keyState, error) {
	primary, all := r.keys()
	if len(primary) == 0 {
		return nil, errNoPrimary
	}
	now := r.now()
	r.mu.Lock()
	defer r.mu.Unlock()
	cur := r.cur
	if cur != nil && cur.matches(primary, all) && !leafStale(cur.leaf, now) {
		return cur, nil
	}
	next, err := r.buildLocked(primary, all, now)
	if err != nil {
		return nil, err
	}
	r.cur = next
	return next, nil
}

// buildLocked derives the state for primary and all, reusing the CAs
// already derived and this node's certificate when the primary key is
// unchanged and the certificate not stale. The caller holds r.mu.
func (r *keyring) buildLocked(primary []byte, all [][]byte, now time.Time) (*keyState, error) {
	s := &keyState{primary: bytes.Clone(primary), all: [][]byte{bytes.Clone(primary)}, pool: x509.NewCertPool()}
	for _, k := range all {
		if len(k) > 0 && !containsKey(s.all, k) {
			s.all = append(s.all, bytes.Clone(k))
		}
	}
	cas := make(map[string]*authority, len(s.all))
	for _, k := range s.all {
		ca, ok := r.cas[string(k)]
		if !ok {
			var err error
			if ca, err = deriveAuthority(k); err != nil {
				return nil, err
			}
		}
		cas[string(k)] = ca
		s.pool.AddCert(ca.cert)
	}
	if old := r.cur; old != nil && bytes.Equal(old.primary, primary) && !leafStale(old.leaf, now) {
		s.leaf = old.leaf
	} else {
		leaf, err := cas[string(primary)].mintLeaf(r.node, now)
		if err != nil {
			return nil, err
		}
		s.leaf = leaf
	}
	r.cas = cas
	return s, nil
}
