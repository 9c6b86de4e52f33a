package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"

	"golang.org/x/sync/errgroup"
)

// Workload is producers putting messages on queues and consumers getting
// them, until every message put has been got.
type Workload struct {
	// Queues are named q1, q2, ….
	Queues int
	// Producers share Messages between them; each puts Batch messages at
	// a time, on the queues in turn.
	Producers, Messages int
	// Consumers get up to Batch messages at a time from each queue in
	// turn, check them and acknowledge them.
	Consumers int
	// Size is the length of a message body; Batch the messages per put
	// and per receive.
	Size, Batch int

	// Sent, if set, is called for every message put, with its sequence
	// number, from the producer's goroutine.
	Sent func(queue string, seq uint64, m Message)
	// Got, if set, is called for every message a consumer gets, in the
	// order it gets them, from the consumer's goroutine.
	Got func(consumer int, d Delivery)
}

// Progress counts a workload's messages as it runs.
type Progress struct {
	Put, PutBytes, Got, GotBytes atomic.Uint64
}

// QueueNames are the queues the workload uses.
func (w *Workload) QueueNames() []string {
	names := make([]string, w.Queues)
	for i := range names {
		names[i] = fmt.Sprintf("q%d", i+1)
	}
	return names
}

// Run runs the workload on svc. When stop is closed, producers put no more
// and consumers drain what was put; Run returns once they have. ctx ends
// everything at once.
func (w *Workload) Run(ctx context.Context, svc *Service, stop <-chan struct{}, p *Progress) error {
	queues := w.QueueNames()
	g, ctx := errgroup.WithContext(ctx)
	// Producers nudge a waiting consumer after each put.
	wake := make(chan struct{}, 1)
	var producers sync.WaitGroup
	for i := range w.Producers {
		producers.Add(1)
		g.Go(func() error {
			defer producers.Done()
			return w.produce(ctx, svc, i, queues, stop, wake, p)
		})
	}
	produced := make(chan struct{})
	go func() {
		producers.Wait()
		close(produced)
	}()
	for i := range w.Consumers {
		g.Go(func() error { return w.consume(ctx, svc, i, queues, produced, wake, p) })
	}
	return g.Wait()
}

// produce puts producer i's share of the messages, a batch at a time, on
// the queues in turn.
func (w *Workload) produce(ctx context.Context, svc *Service, i int, queues []string, stop <-chan struct{}, wake chan<- struct{}, p *Progress) error {
	n := w.Messages / w.Producers
	if i < w.Messages%w.Producers {
		n++
	}
	for sent, b := 0, 0; sent < n; b++ {
		select {
		case <-stop:
			return nil
		default:
		}
		queue := queues[(i+b)%len(queues)]
		batch := make([]Message, min(w.Batch, n-sent))
		for j := range batch {
			id := fmt.Sprintf("p%d-%d", i, sent+j)
			batch[j] = Message{ID: id, Body: body(id, w.Size)}
		}
		seqs, err := svc.Put(ctx, queue, batch...)
		if err != nil {
			return fmt.Errorf("producer %d: %w", i, err)
		}
		sent += len(batch)
		for j, m := range batch {
			p.Put.Add(1)
			p.PutBytes.Add(uint64(len(m.Body)))
			if w.Sent != nil {
				w.Sent(queue, seqs[j], m)
			}
		}
		select {
		case wake <- struct{}{}:
		default: // a nudge is pending already
		}
	}
	return nil
}

// consume gets, checks and acknowledges messages from every queue in
// turn, starting at its own, until the producers are done and the queues
// are empty.
func (w *Workload) consume(ctx context.Context, svc *Service, i int, queues []string, produced <-chan struct{}, wake <-chan struct{}, p *Progress) error {
	for {
		// Seen before the pass: if the producers were done then and the
		// pass finds nothing, nothing is left.
		done := isClosed(produced)
		got := 0
		for j := range queues {
			queue := queues[(i+j)%len(queues)]
			ds, err := svc.Receive(ctx, queue, w.Batch)
			if err != nil {
				return fmt.Errorf("consumer %d: %w", i, err)
			}
			seqs := make([]uint64, len(ds))
			for k, d := range ds {
				// A message's body is a function of its id: check it.
				if !bytes.Equal(d.Body, body(d.ID, len(d.Body))) {
					return fmt.Errorf("consumer %d: queue %s: message %d (%s) is not what was put", i, queue, d.Seq, d.ID)
				}
				if w.Got != nil {
					w.Got(i, d)
				}
				seqs[k] = d.Seq
			}
			if err := svc.Ack(ctx, queue, seqs...); err != nil {
				return fmt.Errorf("consumer %d: %w", i, err)
			}
			for _, d := range ds {
				p.Got.Add(1)
				p.GotBytes.Add(uint64(len(d.Body)))
			}
			got += len(ds)
		}
		switch {
		case got > 0:
			continue
		case done:
			return nil
		}
		select {
		case <-wake:
		case <-produced:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// body is the body of message id: size bytes that depend on the id, so
// that a consumer can check a message without a copy of what was put.
func body(id string, size int) []byte {
	b := make([]byte, size)
	_, _ = rand.NewChaCha8(sha256.Sum256([]byte(id))).Read(b)
	return b
}
