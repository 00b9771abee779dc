package rdma

import (
	"container/list"
	"fmt"
	"sync"
)

// epStore holds an HCA's live endpoints by peer NIC path, at most capacity
// of them; inserting into a full store evicts one by SIEVE (NSDI'24, the
// default) or FIFO, as Mooncake's stores do. An evicted endpoint is never
// freed with work in flight: it leaves service and is destroyed when its
// last work request completes (Mooncake R2, R3).
type epStore struct {
	policy   StorePolicy
	capacity int

	mu     sync.Mutex
	byPath map[string]*list.Element // +checklocks:mu
	order  *list.List               // +checklocks:mu; *endpoint, newest at the front
	hand   *list.Element            // +checklocks:mu; SIEVE's hand
	closed bool                     // +checklocks:mu
}

func newEPStore(policy StorePolicy, capacity int) *epStore {
	return &epStore{policy: policy, capacity: capacity, byPath: map[string]*list.Element{}, order: list.New()}
}

// getOrCreate returns the live endpoint for path, creating it with create
// when there is none (evicting first when the store is full).
func (s *epStore) getOrCreate(path string, create func() (*endpoint, error)) (*endpoint, error) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, ErrClosed
	}
	if e, ok := s.byPath[path]; ok {
		ep := e.Value.(*endpoint)
		ep.visited.Store(true)
		s.mu.Unlock()
		return ep, nil
	}
	var victims []*endpoint
	for s.order.Len() >= s.capacity {
		victims = append(victims, s.evictLocked())
	}
	ep, err := create()
	if err == nil {
		s.byPath[path] = s.order.PushFront(ep)
	}
	s.mu.Unlock()
	for _, v := range victims {
		v.retire(modeEvicted, nil)
	}
	if err != nil {
		return nil, fmt.Errorf("create endpoint %s: %w", path, err)
	}
	return ep, nil
}

// evictLocked removes and returns the victim. SIEVE: walk from the hand
// toward the newest entry, clearing visited bits, until an unvisited one;
// the hand then rests on its older neighbour. FIFO: the oldest entry.
// +checklocks:s.mu
func (s *epStore) evictLocked() *endpoint {
	var victim *list.Element
	if s.policy == StoreFIFO {
		victim = s.order.Back()
	} else {
		e := s.hand
		if e == nil {
			e = s.order.Back()
		}
		for {
			ep := e.Value.(*endpoint)
			if !ep.visited.Load() {
				break
			}
			ep.visited.Store(false)
			if e = e.Prev(); e == nil {
				e = s.order.Back()
			}
		}
		victim = e
		s.hand = e // removal moves the hand on to the next newer entry
	}
	ep := victim.Value.(*endpoint)
	s.removeElementLocked(victim)
	return ep
}

// +checklocks:s.mu
func (s *epStore) removeElementLocked(e *list.Element) {
	ep := e.Value.(*endpoint)
	if s.hand == e {
		s.hand = e.Prev() // the next to examine, toward the newest
	}
	delete(s.byPath, ep.peerPath)
	s.order.Remove(e)
}

// remove drops ep if it is the live endpoint of its path.
func (s *epStore) remove(ep *endpoint) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e, ok := s.byPath[ep.peerPath]; ok && e.Value.(*endpoint) == ep {
		s.removeElementLocked(e)
	}
}

// removeIf removes and returns the endpoints matching f.
func (s *epStore) removeIf(f func(*endpoint) bool) []*endpoint {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.removeIfLocked(f)
}

// +checklocks:s.mu
func (s *epStore) removeIfLocked(f func(*endpoint) bool) []*endpoint {
	var out []*endpoint
	for e := s.order.Front(); e != nil; {
		next := e.Next()
		if ep := e.Value.(*endpoint); f(ep) {
			out = append(out, ep)
			s.removeElementLocked(e)
		}
		e = next
	}
	return out
}

// closeAll empties the store for good and returns what it held.
func (s *epStore) closeAll() []*endpoint {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	return s.removeIfLocked(func(*endpoint) bool { return true })
}

// paths lists the live endpoints' paths, newest first (tests).
func (s *epStore) paths() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for e := s.order.Front(); e != nil; e = e.Next() {
		out = append(out, e.Value.(*endpoint).peerPath)
	}
	return out
}
