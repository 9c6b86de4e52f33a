package client

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"
	"unsafe"

	"google.golang.org/grpc/codes"

	"github.com/keybroker/keybroker/envelope"
	"github.com/keybroker/keybroker/internal/clip"
	"github.com/keybroker/keybroker/secret"
)

// EncryptorConfig configures an Encryptor.
type EncryptorConfig struct {
	// Key is the managed key whose data keys seal the messages. Required.
	Key string
	// Reuse bounds how long one data key seals messages: its period
	// (60 s to 24 h, default 5 min), message count and byte count,
	// whichever ends first.
	Reuse envelope.ReusePolicy
	// MaxDataKeys bounds the data keys held at once, one per encryption
	// context in use (default 1024).
	MaxDataKeys int
	// SegmentSize is the plaintext bytes per segment of the streams
	// NewWriter makes (default envelope.DefaultSegmentSize, 64 KiB).
	SegmentSize int
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// Encryptor seals messages locally under data keys it obtains with
// GenerateDataKey and reuses within the reuse policy, so that a stream of
// messages costs one call to the broker per reuse period and encryption
// context. Its ciphertexts are keybroker ciphertexts: any node's Decrypt
// and any Decryptor open them. It is safe for concurrent use.
type Encryptor struct {
	c       *Client
	key     string
	segment int
	reuser  *envelope.Reuser
	msgs    atomic.Uint64
	bytes   atomic.Uint64
	streams atomic.Uint64
}

// NewEncryptor returns an Encryptor for cfg.Key.
func (c *Client) NewEncryptor(cfg EncryptorConfig) (*Encryptor, error) {
	if !envelope.ValidKeyID(cfg.Key) {
		return nil, fmt.Errorf("client: encryptor key id %s is not 1-128 bytes of [A-Za-z0-9._:/-]", clip.Quote(cfg.Key))
	}
	reuse := cfg.Reuse.WithDefaults()
	if err := reuse.Validate(); err != nil {
		return nil, fmt.Errorf("client: encryptor: %w", err)
	}
	if cfg.MaxDataKeys <= 0 {
		cfg.MaxDataKeys = 1024
	}
	r, err := envelope.NewReuser(reuse, cfg.MaxDataKeys, cfg.Now)
	if err != nil {
		return nil, fmt.Errorf("client: encryptor: %w", err)
	}
	if cfg.SegmentSize != 0 && (cfg.SegmentSize < envelope.MinSegmentSize || cfg.SegmentSize > envelope.MaxSegmentSize) {
		return nil, fmt.Errorf("client: encryptor segment size %d is outside %d..%d", cfg.SegmentSize, envelope.MinSegmentSize, envelope.MaxSegmentSize)
	}
	return &Encryptor{c: c, key: cfg.Key, segment: cfg.SegmentSize, reuser: r}, nil
}

// Encrypt seals plaintext (at most 16 MiB; use NewWriter for more) under
// the current data key for ectx, getting a new one from the broker when
// there is none or it is spent.
func (e *Encryptor) Encrypt(ctx context.Context, plaintext []byte, ectx map[string]string) ([]byte, error) {
	if len(plaintext) > envelope.MaxMessage {
		return nil, local("Encrypt", e.key, codes.InvalidArgument, fmt.Errorf("%w: %d bytes, limit %d: use NewWriter", envelope.ErrTooLarge, len(plaintext), envelope.MaxMessage))
	}
	var buf [contextBuffer]byte
	canon, err := envelope.AppendCanonicalContext(buf[:0], ectx)
	if err != nil {
		return nil, invalid("Encrypt", e.key, err)
	}
	// A warm data key is taken without a lock or an allocation; the
	// partition is the encoded context itself, viewed in place for the
	// lookup and copied only to get a new data key.
	dk := e.reuser.Take(unsafe.String(unsafe.SliceData(canon), len(canon)), len(plaintext))
	if dk == nil {
		if dk, err = e.dataKey(ctx, len(plaintext), ectx, string(canon)); err != nil {
			return nil, err
		}
	}
	ct, err := dk.SealCanonical(plaintext, canon)
	if err != nil {
		return nil, invalid("Encrypt", e.key, err)
	}
	e.msgs.Add(1)
	e.bytes.Add(uint64(len(plaintext)))
	return ct, nil
}

// contextBuffer is the room on the stack for an encoded encryption
// context; a larger one is encoded on the heap.
const contextBuffer = 128

// dataKey returns the data key to seal n bytes under ectx, whose encoding
// is partition, getting a new one from the broker when there is none or it
// is spent. Data keys are kept per encryption context: the broker wraps
// each context's data keys under their own key when the managed key is
// derived, and one data key never serves two contexts, whatever the key.
func (e *Encryptor) dataKey(ctx context.Context, n int, ectx map[string]string, partition string) (*envelope.DataKey, error) {
	dk, err := e.reuser.Get(ctx, partition, n, func(ctx context.Context) (*envelope.DataKey, error) {
		g, err := e.c.GenerateDataKey(ctx, e.key, ectx)
		if err != nil {
			return nil, err
		}
		if len(g.Wrapped) == 0 {
			clear(g.Plaintext)
			return nil, local("GenerateDataKey", e.key, codes.Unimplemented, errors.New("the node returned no wrapped data key: it predates client-side encryption"))
		}
		dk, err := envelope.NewDataKey(g.KeyID, g.Version, secret.New(g.Plaintext), g.Wrapped)
		if err != nil {
			return nil, local("GenerateDataKey", e.key, codes.Internal, err)
		}
		return dk, nil
	})
	if err != nil {
		return nil, fromRPC("Encrypt", e.key, "", err)
	}
	return dk, nil
}

// EncryptorStats counts an Encryptor's work.
type EncryptorStats struct {
	// Messages and Bytes sealed with Encrypt; Streams opened with
	// NewWriter.
	Messages, Bytes, Streams uint64
	// DataKeys is how many data keys were obtained from the broker.
	DataKeys uint64
}

// Stats reports what the Encryptor has done.
func (e *Encryptor) Stats() EncryptorStats {
	return EncryptorStats{Messages: e.msgs.Load(), Bytes: e.bytes.Load(), Streams: e.streams.Load(), DataKeys: e.reuser.Created()}
}

// Close forgets every data key, so later messages get new ones. The keys
// are dropped, not zeroed: a message being sealed at the same moment may
// still hold one (see the envelope package's # Secrets).
func (e *Encryptor) Close() { e.reuser.Forget(func(string) bool { return true }) }

// DecryptorConfig configures a Decryptor.
type DecryptorConfig struct {
	// CacheSize bounds the data keys kept (default 1024).
	CacheSize int
	// TTL bounds how long a data key is kept (default 5 min). It is also
	// how long a Decryptor may keep opening ciphertexts of a key after the
	// key is disabled.
	TTL time.Duration
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// Decryptor opens keybroker ciphertexts locally: it gets each data key
// once with DecryptDataKey and keeps it in a bounded cache, so that the
// messages sealed under one data key cost one call to the broker. It opens
// what Encryptors and every node sealed. Concurrent misses for one data
// key make one call. It is safe for concurrent use.
type Decryptor struct {
	c     *Client
	cache *envelope.Cache
	ttl   time.Duration
	now   func() time.Time
	// mono is set when now is time.Now: the last data key's expiry is
	// then checked against the monotonic clock alone.
	mono bool
	// msgs counts the messages opened through the cache; hits those
	// opened under the last data key, one count each on the fast path.
	msgs    atomic.Uint64
	hits    atomic.Uint64
	streams atomic.Uint64
	fetches atomic.Uint64
	// last is the data key of the last message opened, tried first: a
	// stream of messages under one data key skips the header parse and
	// the cache.
	last atomic.Pointer[recentKey]
}

type recentKey struct {
	dk      *envelope.DataKey
	expires time.Time
}

// recentFor bounds how long the last data key is tried without the cache,
// so that it never outlives the cache's TTL by more than this.
const recentFor = time.Second

// NewDecryptor returns a Decryptor.
func (c *Client) NewDecryptor(cfg DecryptorConfig) *Decryptor {
	if cfg.CacheSize <= 0 {
		cfg.CacheSize = 1024
	}
	if cfg.TTL <= 0 {
		cfg.TTL = envelope.DefaultReusePeriod
	}
	mono := cfg.Now == nil
	if mono {
		cfg.Now = time.Now
	}
	return &Decryptor{c: c, cache: envelope.NewCache(cfg.CacheSize, cfg.TTL, cfg.Now), ttl: cfg.TTL, now: cfg.Now, mono: mono}
}

// Decrypt opens a ciphertext sealed with encryption context ectx: a
// message, or a whole streaming ciphertext held in memory. On error the
// plaintext is nil, whatever part of a stream had authenticated.
func (d *Decryptor) Decrypt(ctx context.Context, ciphertext []byte, ectx map[string]string) ([]byte, error) {
	if envelope.IsStream(ciphertext) {
		return d.openStream(ctx, ciphertext, ectx)
	}
	var buf [contextBuffer]byte
	canon, err := envelope.AppendCanonicalContext(buf[:0], ectx)
	if err != nil {
		return nil, invalid("Decrypt", "", err)
	}
	if r := d.last.Load(); r != nil && d.recent(r) {
		if pt, own, err := r.dk.OpenOwn(ciphertext, canon); own {
			if err != nil {
				return nil, invalid("Decrypt", r.dk.KeyID, err)
			}
			d.hits.Add(1)
			return pt, nil
		}
	}
	h, body, err := envelope.ParseHeader(ciphertext)
	if err != nil {
		return nil, invalid("Decrypt", "", err)
	}
	dk, err := d.dataKey(ctx, h, ectx)
	if err != nil {
		return nil, err
	}
	pt, err := dk.OpenCanonical(h, body, canon)
	if err != nil {
		return nil, invalid("Decrypt", h.KeyID, err)
	}
	d.last.Store(&recentKey{dk: dk, expires: d.now().Add(min(recentFor, d.ttl))})
	d.msgs.Add(1)
	return pt, nil
}

// recent reports whether r may still be used without the cache.
func (d *Decryptor) recent(r *recentKey) bool {
	if d.mono {
		return time.Until(r.expires) > 0
	}
	return d.now().Before(r.expires)
}

// dataKey returns the data key of h from the cache or the broker.
func (d *Decryptor) dataKey(ctx context.Context, h *envelope.Header, ectx map[string]string) (*envelope.DataKey, error) {
	dk, err := d.cache.Get(ctx, h, func(ctx context.Context) (*envelope.DataKey, error) {
		d.fetches.Add(1)
		raw, err := d.c.DecryptDataKey(ctx, h.KeyID, h.Version, h.WrappedDEK, ectx)
		if err != nil {
			return nil, err
		}
		dk, err := envelope.NewDataKey(h.KeyID, h.Version, secret.New(raw), append([]byte(nil), h.WrappedDEK...))
		if err != nil {
			return nil, local("DecryptDataKey", h.KeyID, codes.Internal, err)
		}
		return dk, nil
	})
	if err != nil {
		return nil, fromRPC("Decrypt", h.KeyID, "", err)
	}
	return dk, nil
}

// DecryptorStats counts a Decryptor's work.
type DecryptorStats struct {
	// Messages opened with Decrypt; Streams opened with NewReader.
	Messages, Streams uint64
	// DataKeys is how many data keys were fetched from the broker
	// (concurrent misses for one make one fetch); CacheHits how many
	// openings found theirs in the cache.
	DataKeys, CacheHits uint64
}

// Stats reports what the Decryptor has done.
func (d *Decryptor) Stats() DecryptorStats {
	hits, _, _ := d.cache.Stats()
	fast := d.hits.Load()
	return DecryptorStats{Messages: d.msgs.Load() + fast, Streams: d.streams.Load(), DataKeys: d.fetches.Load(), CacheHits: hits + fast}
}

// Close forgets every data key; the runtime zeroes each once no call
// still holds it.
func (d *Decryptor) Close() {
	d.last.Store(nil)
	d.cache.PurgeAll()
}
