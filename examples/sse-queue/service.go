package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"regexp"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/client"
	"github.com/keybroker/keybroker/envelope"
)

// Message is what a producer puts and a consumer gets.
type Message struct {
	// ID names the message (1 to 255 bytes). It is stored in the clear
	// next to the ciphertext and sealed inside it as well.
	ID   string
	Body []byte
}

// Delivery is a message handed to a consumer.
type Delivery struct {
	Queue string
	// Seq is the message's place in its queue; Ack takes it.
	Seq uint64
	Message
}

// ServiceConfig configures a Service.
type ServiceConfig struct {
	// DB is the bbolt file holding the queues, created if missing.
	DB string
	// Client makes the data-key calls (GenerateDataKey, DecryptDataKey).
	Client *client.Client
	// Admin creates the queues' keys.
	Admin kbv1.KeyAdminClient
	// Reuse is how long one data key seals a queue's messages, 60 s to
	// 24 h (default 5 min). It is also how long the consumer side keeps a
	// data key.
	Reuse time.Duration
	// Now is the clock of data-key reuse and caching (default time.Now);
	// tests move it forward.
	Now func() time.Time
}

// Service is a message queue that encrypts on the server side: producers
// hand it plaintext, it seals every message before the message touches the
// disk, and consumers get the plaintext back.
//
// # Keys
//
// Each queue has its own managed key, queue-<name> (AES-256-GCM, derive
// mode), created on the queue's first put if it does not exist. Messages
// are sealed locally by a client.Encryptor with a data key it gets from
// keybroker and reuses for the reuse period; the encryption context is
// {"queue": name}, the same for every message of the queue, which is what
// lets one data key seal them all. Per-message data (the id) stays out of
// the context: the id is sealed inside the plaintext instead, so that one
// stored ciphertext cannot be passed off as another message.
//
// A client.Decryptor opens what consumers get: the data key named in a
// ciphertext's header is fetched once and cached, so every other message
// under it opens without a call.
//
// # Storage and delivery
//
// One bbolt bucket per queue holds the records, keyed by a big-endian
// sequence number: record = uvarint(len(id)) || id || ciphertext, and the
// ciphertext carries its wrapped data key, so a record is all a consumer
// needs. Producers put in batches, one transaction each. Receive hands out
// the oldest messages not yet handed out, in order; Ack deletes them.
// Delivery is at least once: what was handed out but not acknowledged
// when the process stops (or a batch that failed to open) is delivered
// again by the next process, which starts from the oldest message stored.
//
// A Service is safe for concurrent use.
type Service struct {
	db    *bolt.DB
	cl    *client.Client
	admin kbv1.KeyAdminClient
	reuse time.Duration
	now   func() time.Time
	dec   *client.Decryptor

	mu     sync.Mutex
	queues map[string]*queue
}

// queue is a queue's key, Encryptor and delivery cursor.
type queue struct {
	name string
	key  string
	ectx map[string]string

	ready sync.Mutex                       // held while the key is made ready
	enc   atomic.Pointer[client.Encryptor] // nil until then

	mu   sync.Mutex
	next uint64 // the first sequence number not yet handed out
}

// KeyPrefix is put before a queue's name to name its key.
const KeyPrefix = "queue-"

// queueName is what a queue may be called: a bucket name, and with
// KeyPrefix a valid key id and label value.
var queueName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

// maxIDLen bounds a message id.
const maxIDLen = 255

// NewService opens (or creates) the database and returns a Service.
func NewService(cfg ServiceConfig) (*Service, error) {
	if cfg.Client == nil || cfg.Admin == nil {
		return nil, errors.New("service: a client and an admin client are required")
	}
	if cfg.Reuse == 0 {
		cfg.Reuse = envelope.DefaultReusePeriod
	}
	if err := (envelope.ReusePolicy{Period: cfg.Reuse}).WithDefaults().Validate(); err != nil {
		return nil, fmt.Errorf("service: %w", err)
	}
	// A second process on the same file fails after a second instead of
	// waiting for the lock forever.
	db, err := bolt.Open(cfg.DB, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		return nil, fmt.Errorf("service: opening %s: %w", cfg.DB, err)
	}
	return &Service{
		db:     db,
		cl:     cfg.Client,
		admin:  cfg.Admin,
		reuse:  cfg.Reuse,
		now:    cfg.Now,
		dec:    cfg.Client.NewDecryptor(client.DecryptorConfig{TTL: cfg.Reuse, Now: cfg.Now}),
		queues: map[string]*queue{},
	}, nil
}

// Close zeroes the data keys held and closes the database.
func (s *Service) Close() error {
	s.mu.Lock()
	for _, q := range s.queues {
		if enc := q.enc.Load(); enc != nil {
			enc.Close()
		}
	}
	s.mu.Unlock()
	s.dec.Close()
	return s.db.Close()
}

func (s *Service) queue(name string) (*queue, error) {
	if !queueName.MatchString(name) {
		return nil, fmt.Errorf("queue name %q is not 1-63 of [A-Za-z0-9._-] starting with a letter or digit", name)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	q, ok := s.queues[name]
	if !ok {
		q = &queue{name: name, key: KeyPrefix + name, ectx: map[string]string{"queue": name}}
		s.queues[name] = q
	}
	return q, nil
}

// Put seals msgs and appends them to the queue in one transaction,
// returning their sequence numbers. The queue's key is created on its
// first put.
func (s *Service) Put(ctx context.Context, name string, msgs ...Message) ([]uint64, error) {
	q, err := s.queue(name)
	if err != nil {
		return nil, err
	}
	enc, err := s.encryptor(ctx, q)
	if err != nil {
		return nil, err
	}
	records := make([][]byte, len(msgs))
	for i, m := range msgs {
		if len(m.ID) == 0 || len(m.ID) > maxIDLen {
			return nil, fmt.Errorf("queue %s: message id %q is not 1-%d bytes", name, m.ID, maxIDLen)
		}
		ct, err := enc.Encrypt(ctx, frame(m.ID, m.Body), q.ectx)
		if err != nil {
			return nil, fmt.Errorf("queue %s: sealing message %s: %w", name, m.ID, err)
		}
		records[i] = frame(m.ID, ct)
	}
	seqs := make([]uint64, len(msgs))
	err = s.db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists([]byte(name))
		if err != nil {
			return err
		}
		for i, r := range records {
			seq, err := b.NextSequence()
			if err != nil {
				return err
			}
			if err := b.Put(seqKey(seq), r); err != nil {
				return err
			}
			seqs[i] = seq
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("queue %s: storing: %w", name, err)
	}
	return seqs, nil
}

// Receive returns up to max of the oldest messages not yet handed out,
// decrypted, in order. It returns none when there are none.
func (s *Service) Receive(ctx context.Context, name string, max int) ([]Delivery, error) {
	q, err := s.queue(name)
	if err != nil {
		return nil, err
	}
	type record struct {
		seq uint64
		id  string
		ct  []byte
	}
	var recs []record
	q.mu.Lock()
	err = s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte(name))
		if b == nil {
			return nil
		}
		c := b.Cursor()
		for k, v := c.Seek(seqKey(q.next)); k != nil && len(recs) < max; k, v = c.Next() {
			seq := binary.BigEndian.Uint64(k)
			id, ct, err := unframe(v)
			if err != nil {
				return fmt.Errorf("record %d: %w", seq, err)
			}
			// bbolt's memory is only valid inside the transaction.
			recs = append(recs, record{seq, id, bytes.Clone(ct)})
		}
		return nil
	})
	if err == nil && len(recs) > 0 {
		q.next = recs[len(recs)-1].seq + 1
	}
	q.mu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("queue %s: reading: %w", name, err)
	}

	out := make([]Delivery, len(recs))
	for i, r := range recs {
		pt, err := s.dec.Decrypt(ctx, r.ct, q.ectx)
		if err != nil {
			return nil, fmt.Errorf("queue %s: opening message %d: %w", name, r.seq, err)
		}
		id, body, err := unframe(pt)
		if err != nil {
			return nil, fmt.Errorf("queue %s: message %d: %w", name, r.seq, err)
		}
		if id != r.id {
			return nil, fmt.Errorf("queue %s: message %d is stored as %q but was sealed as %q", name, r.seq, r.id, id)
		}
		out[i] = Delivery{Queue: name, Seq: r.seq, Message: Message{ID: id, Body: body}}
	}
	return out, nil
}

// Ack deletes messages that were received. bbolt cannot be interrupted:
// ctx is checked before the transaction.
func (s *Service) Ack(ctx context.Context, name string, seqs ...uint64) error {
	if len(seqs) == 0 {
		return nil
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte(name))
		if b == nil {
			return nil
		}
		for _, seq := range seqs {
			if err := b.Delete(seqKey(seq)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("queue %s: acknowledging: %w", name, err)
	}
	return nil
}

// Len counts the messages stored in a queue, handed out or not.
func (s *Service) Len(ctx context.Context, name string) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	n := 0
	err := s.db.View(func(tx *bolt.Tx) error {
		if b := tx.Bucket([]byte(name)); b != nil {
			n = b.Stats().KeyN
		}
		return nil
	})
	return n, err
}

// Stats is what the Service's keybroker SDK has done: the Encryptors'
// counts summed over the queues, the Decryptor's, and the calls the SDK
// made to each node (lookups included).
type Stats struct {
	Encryptor client.EncryptorStats
	Decryptor client.DecryptorStats
	Calls     map[string]uint64
}

// Stats reports the Service's work so far.
func (s *Service) Stats() Stats {
	var st Stats
	s.mu.Lock()
	for _, q := range s.queues {
		if enc := q.enc.Load(); enc != nil {
			e := enc.Stats()
			st.Encryptor.Messages += e.Messages
			st.Encryptor.Bytes += e.Bytes
			st.Encryptor.Streams += e.Streams
			st.Encryptor.DataKeys += e.DataKeys
		}
	}
	s.mu.Unlock()
	st.Decryptor = s.dec.Stats()
	st.Calls = s.cl.Calls()
	return st
}

// encryptor returns q's Encryptor, first making sure that q's key exists.
func (s *Service) encryptor(ctx context.Context, q *queue) (*client.Encryptor, error) {
	if enc := q.enc.Load(); enc != nil {
		return enc, nil
	}
	q.ready.Lock()
	defer q.ready.Unlock()
	if enc := q.enc.Load(); enc != nil {
		return enc, nil // made while this call waited for the lock
	}
	if err := s.ensureKey(ctx, q); err != nil {
		return nil, err
	}
	enc, err := s.cl.NewEncryptor(client.EncryptorConfig{Key: q.key, Reuse: envelope.ReusePolicy{Period: s.reuse}, Now: s.now})
	if err != nil {
		return nil, err
	}
	q.enc.Store(enc)
	return enc, nil
}

// ensureKey creates q's key unless it exists. A new key is created at the
// central tier and reaches the edges through their replication stream, and
// an edge answers NotFound for a key it has not applied yet; so after
// creating one, ensureKey waits until every connected edge has applied it.
func (s *Service) ensureKey(ctx context.Context, q *queue) error {
	md, err := s.admin.CreateKey(ctx, &kbv1.CreateKeyRequest{
		KeyId:       q.key,
		Type:        kbv1.KeyType_KEY_TYPE_AES_256_GCM,
		Mode:        kbv1.KeyMode_KEY_MODE_DERIVE,
		Labels:      map[string]string{"app": "sse-queue", "queue": q.name},
		Description: "sse-queue: seals the messages of queue " + q.name,
	})
	switch status.Code(err) {
	case codes.OK:
		return waitApplied(ctx, s.admin, md.GetRevision())
	case codes.AlreadyExists:
		return nil
	case codes.PermissionDenied:
		// This identity may not create keys: an administrator must have
		// created it, or the first put fails with NotFound.
		return nil
	}
	return fmt.Errorf("queue %s: creating key %s: %w", q.name, q.key, err)
}

// waitApplied waits until every edge that follows the central tier has
// applied registry revision rev (ListNodes reports what each edge has
// acknowledged).
func waitApplied(ctx context.Context, admin kbv1.KeyAdminClient, rev uint64) error {
	pause := 5 * time.Millisecond
	for {
		resp, err := admin.ListNodes(ctx, &kbv1.ListNodesRequest{})
		switch {
		case status.Code(err) == codes.PermissionDenied:
			return nil // no way to tell; the SDK's first call may find the key missing at an edge
		case err != nil:
			return fmt.Errorf("waiting for the edges to apply revision %d: %w", rev, err)
		}
		behind := false
		for _, n := range resp.GetNodes() {
			if n.GetKind() == "edge" && n.GetConnected() && n.GetAppliedRevision() < rev {
				behind = true
			}
		}
		if !behind {
			return nil
		}
		t := time.NewTimer(pause)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("waiting for the edges to apply revision %d: %w", rev, context.Cause(ctx))
		case <-t.C:
		}
		pause = min(2*pause, time.Second)
	}
}

// frame is uvarint(len(id)) || id || rest: a record (rest the ciphertext)
// and a sealed plaintext (rest the body) alike.
func frame(id string, rest []byte) []byte {
	b := make([]byte, 0, binary.MaxVarintLen64+len(id)+len(rest))
	b = binary.AppendUvarint(b, uint64(len(id)))
	b = append(b, id...)
	return append(b, rest...)
}

func unframe(b []byte) (id string, rest []byte, err error) {
	n, k := binary.Uvarint(b)
	var canon [binary.MaxVarintLen64]byte
	if k <= 0 || k != binary.PutUvarint(canon[:], n) || n == 0 || n > maxIDLen || uint64(len(b)-k) < n {
		return "", nil, errors.New("malformed record")
	}
	return string(b[k : k+int(n)]), b[k+int(n):], nil
}

func seqKey(seq uint64) []byte { return binary.BigEndian.AppendUint64(nil, seq) }
