package main

import (
	"fmt"
	"io"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	kbv1 "github.com/keybroker/keybroker/api/keybroker/v1"
	"github.com/keybroker/keybroker/envelope"
)

// JSON results of the crypto commands. Field names are stable; []byte
// fields are base64. A binary field is left out only when --out wrote it to
// a file.
type (
	encryptJSON struct {
		KeyID      string `json:"key_id"`
		KeyVersion uint32 `json:"key_version"`
		Ciphertext []byte `json:"ciphertext,omitzero"`
	}
	decryptJSON struct {
		KeyID      string `json:"key_id"`
		KeyVersion uint32 `json:"key_version"`
		Plaintext  []byte `json:"plaintext,omitzero"`
	}
	reencryptJSON struct {
		SourceKeyID      string `json:"source_key_id"`
		SourceKeyVersion uint32 `json:"source_key_version"`
		KeyID            string `json:"key_id"`
		KeyVersion       uint32 `json:"key_version"`
		Ciphertext       []byte `json:"ciphertext,omitzero"`
	}
	datakeyJSON struct {
		KeyID            string `json:"key_id"`
		KeyVersion       uint32 `json:"key_version"`
		Plaintext        []byte `json:"plaintext,omitzero"` // left out with --no-plaintext
		EncryptedDataKey []byte `json:"encrypted_data_key"`
	}
	signJSON struct {
		KeyID      string `json:"key_id"`
		KeyVersion uint32 `json:"key_version"`
		Signature  []byte `json:"signature,omitzero"`
	}
	macJSON struct {
		KeyID      string `json:"key_id"`
		KeyVersion uint32 `json:"key_version"`
		MAC        []byte `json:"mac,omitzero"`
	}
	verifyJSON struct {
		Valid      bool   `json:"valid"`
		KeyID      string `json:"key_id"`
		KeyVersion uint32 `json:"key_version"`
	}
	randomJSON struct {
		Random []byte `json:"random,omitzero"`
	}
)

const binaryHelp = `
Input is read from --in (default: stdin). The result goes raw to --out FILE,
raw to stdout when it is not a terminal, and as base64 when it is; with
--output json it is a base64 field of the JSON object.`

func addInFlag(fs *pflag.FlagSet, p *string, what string) {
	fs.StringVar(p, "in", "-", "file to read the "+what+" from; - means stdin")
}

func addOutFlag(fs *pflag.FlagSet, p *string, what string) {
	fs.StringVar(p, "out", "-", "file to write the "+what+" to (mode 0600); - means stdout")
}

func (a *app) encryptCmd() *cobra.Command {
	var (
		key     string
		encCtx  pairsValue
		in, out string
		stream  bool
	)
	cmd := &cobra.Command{
		Use:   "encrypt --key KEY",
		Short: "Encrypt data under a key's primary version",
		Long: `Encrypt data under the key's primary version. The ciphertext names its key
and version, so decrypt needs no --key. Decrypting needs the same --context
pairs: they are bound to the ciphertext but not stored in it.

Input up to 4 MiB is sent to the broker and comes back as one ciphertext that
any node's Decrypt opens. Larger input, or any input with --stream, is
encrypted here as a stream, in constant memory, under a data key the broker
generates (GenerateDataKey): a streaming ciphertext of any size, opened by
keybroker decrypt and the Go SDK. A stream goes to --out FILE (written under
a temporary name and renamed when complete) or to a pipe, with a progress
line on stderr when it is a terminal.
` + binaryHelp,
		Example: `  keybroker encrypt --key payments --in card.txt --out card.enc
  echo -n 'secret' | keybroker encrypt --key payments --context tenant=42 > secret.enc
  keybroker encrypt --key payments --in card.txt --output json | jq -r .ciphertext
  keybroker encrypt --key backups --in db.tar --out db.tar.enc      # any size: a stream
  pg_dump shop | keybroker encrypt --key backups --stream > shop.sql.enc`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			s, err := a.connect(cmd)
			if err != nil {
				return err
			}
			defer s.close()
			src, err := a.openInput(cmd.Context(), in)
			if err != nil {
				return err
			}
			defer src.close()
			pt, err := io.ReadAll(io.LimitReader(src.r, maxPlaintext+1))
			if err != nil {
				return fmt.Errorf("read %s: %w", src.name, err)
			}
			if stream || len(pt) > maxPlaintext {
				return a.encryptStream(cmd.Context(), s, key, encCtx.m, pt, src, out)
			}
			resp, err := invoke(s, "encrypt", s.kb.Encrypt, &kbv1.EncryptRequest{KeyId: key, Plaintext: pt, EncryptionContext: encCtx.m})
			if err != nil {
				return err
			}
			return a.emitBlob(out, resp.GetCiphertext(), func(b []byte) any {
				return encryptJSON{KeyID: resp.GetKeyId(), KeyVersion: resp.GetKeyVersion(), Ciphertext: b}
			}, fmt.Sprintf("encrypted under key %s version %d", resp.GetKeyId(), resp.GetKeyVersion()))
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&key, "key", "", "key to encrypt under")
	fs.Var(&encCtx, "context", "encryption context pair k=v; repeat for more")
	fs.BoolVar(&stream, "stream", false, "write a streaming ciphertext even for input up to 4 MiB")
	addInFlag(fs, &in, "plaintext")
	addOutFlag(fs, &out, "ciphertext")
	a.addClientFlags(fs)
	_ = cmd.MarkFlagRequired("key")
	return cmd
}

func (a *app) decryptCmd() *cobra.Command {
	var (
		key     string
		encCtx  pairsValue
		in, out string
	)
	cmd := &cobra.Command{
		Use:   "decrypt",
		Short: "Decrypt a ciphertext",
		Long: `Decrypt a keybroker ciphertext; its header names the key and version.
Give the same --context pairs it was encrypted with. --key refuses
ciphertexts of any other key.

A streaming ciphertext (from encrypt with input over 4 MiB or --stream, or
from the SDK) is opened here, in constant memory, with its data key from the
broker (DecryptDataKey). Every segment is authenticated before it is written,
and a stream cut short, reordered or altered is refused; with --out FILE the
plaintext is written under a temporary name and renamed only when the whole
stream has authenticated, so a refused stream leaves no file. To a pipe, the
segments before a bad one have already been written: act on the output only
when the exit code is 0.
` + binaryHelp,
		Example: `  keybroker decrypt --in card.enc --out card.txt
  keybroker decrypt --context tenant=42 < secret.enc
  keybroker decrypt --key payments --in card.enc --output json | jq -r .plaintext | base64 -d
  keybroker decrypt --in db.tar.enc --out db.tar                    # a stream, any size`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			s, err := a.connect(cmd)
			if err != nil {
				return err
			}
			defer s.close()
			src, err := a.openInput(cmd.Context(), in)
			if err != nil {
				return err
			}
			defer src.close()
			ct, err := io.ReadAll(io.LimitReader(src.r, 1))
			if err != nil {
				return fmt.Errorf("read %s: %w", src.name, err)
			}
			if envelope.IsStream(ct) {
				return a.decryptStream(cmd.Context(), s, key, encCtx.m, ct, src, out)
			}
			rest, err := io.ReadAll(io.LimitReader(src.r, maxCiphertext))
			if err != nil {
				return fmt.Errorf("read %s: %w", src.name, err)
			}
			if ct = append(ct, rest...); len(ct) > maxCiphertext {
				return invalidInputf("the ciphertext in %s is larger than %s, the most keybroker accepts", src.name, sizeText(maxCiphertext))
			}
			resp, err := invoke(s, "decrypt", s.kb.Decrypt, &kbv1.DecryptRequest{Ciphertext: ct, EncryptionContext: encCtx.m, KeyId: key})
			if err != nil {
				return err
			}
			return a.emitBlob(out, resp.GetPlaintext(), func(b []byte) any {
				return decryptJSON{KeyID: resp.GetKeyId(), KeyVersion: resp.GetKeyVersion(), Plaintext: b}
			}, fmt.Sprintf("decrypted with key %s version %d", resp.GetKeyId(), resp.GetKeyVersion()))
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&key, "key", "", "refuse ciphertexts not under this key")
	fs.Var(&encCtx, "context", "encryption context pair k=v the ciphertext was made with; repeat for more")
	addInFlag(fs, &in, "ciphertext")
	addOutFlag(fs, &out, "plaintext")
	a.addClientFlags(fs)
	return cmd
}

func (a *app) reencryptCmd() *cobra.Command {
	var (
		toKey          string
		srcCtx, dstCtx pairsValue
		in, out        string
	)
	cmd := &cobra.Command{
		Use:   "reencrypt",
		Short: "Re-encrypt a ciphertext under another key or the current primary version",
		Long: `Open a ciphertext and seal its plaintext again, inside the broker: the
plaintext never reaches this machine. Without --to-key the ciphertext's own
key is used, at its current primary version (after a rotation).
--context is the ciphertext's encryption context; --to-context the new
one's. The new context is not copied from --context: give both to keep it.
` + binaryHelp,
		Example: `  keybroker reencrypt --in card.enc --out card.v2.enc
  keybroker reencrypt --to-key payments-2026 --context tenant=42 --to-context tenant=42 \
      --in card.enc --out card.new.enc`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			s, err := a.connect(cmd)
			if err != nil {
				return err
			}
			defer s.close()
			ct, err := a.readInput(in, maxCiphertext, "ciphertext")
			if err != nil {
				return err
			}
			resp, err := invoke(s, "reencrypt", s.kb.ReEncrypt, &kbv1.ReEncryptRequest{
				Ciphertext:                   ct,
				SourceEncryptionContext:      srcCtx.m,
				DestinationKeyId:             toKey,
				DestinationEncryptionContext: dstCtx.m,
			})
			if err != nil {
				return err
			}
			return a.emitBlob(out, resp.GetCiphertext(), func(b []byte) any {
				return reencryptJSON{
					SourceKeyID: resp.GetSourceKeyId(), SourceKeyVersion: resp.GetSourceKeyVersion(),
					KeyID: resp.GetKeyId(), KeyVersion: resp.GetKeyVersion(), Ciphertext: b,
				}
			}, fmt.Sprintf("re-encrypted from key %s version %d to key %s version %d",
				resp.GetSourceKeyId(), resp.GetSourceKeyVersion(), resp.GetKeyId(), resp.GetKeyVersion()))
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&toKey, "to-key", "", "key to re-encrypt under (default: the ciphertext's own key)")
	fs.Var(&srcCtx, "context", "encryption context pair k=v of the ciphertext; repeat for more")
	fs.Var(&dstCtx, "to-context", "encryption context pair k=v for the new ciphertext; repeat for more")
	addInFlag(fs, &in, "ciphertext")
	addOutFlag(fs, &out, "new ciphertext")
	a.addClientFlags(fs)
	return cmd
}

func (a *app) datakeyCmd() *cobra.Command {
	var (
		key         string
		encCtx      pairsValue
		noPlaintext bool
	)
	cmd := &cobra.Command{
		Use:   "datakey --key KEY",
		Short: "Generate a 256-bit data key for client-side encryption",
		Long: `Generate a fresh 256-bit data key and its encrypted form, a keybroker
ciphertext that decrypt (with the same --context) turns back into the key.
Store the encrypted form next to your data; use the plaintext key and forget it.
--no-plaintext returns only the encrypted form, for a key to be opened later
elsewhere. Both are printed in base64.`,
		Example: `  keybroker datakey --key payments --output json
  keybroker datakey --key payments --context tenant=42 --no-plaintext --output json |
      jq -r .encrypted_data_key | base64 -d > dek.enc`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			s, err := a.connect(cmd)
			if err != nil {
				return err
			}
			defer s.close()
			rpc := s.kb.GenerateDataKey
			if noPlaintext {
				rpc = s.kb.GenerateDataKeyWithoutPlaintext
			}
			resp, err := invoke(s, "datakey", rpc, &kbv1.GenerateDataKeyRequest{KeyId: key, EncryptionContext: encCtx.m})
			if err != nil {
				return err
			}
			if a.jsonOutput() {
				return a.printJSON(datakeyJSON{
					KeyID: resp.GetKeyId(), KeyVersion: resp.GetKeyVersion(),
					Plaintext: resp.GetPlaintext(), EncryptedDataKey: resp.GetEncryptedDataKey(),
				})
			}
			rows := [][2]string{
				{"key_id", resp.GetKeyId()},
				{"key_version", fmt.Sprint(resp.GetKeyVersion())},
			}
			if !noPlaintext {
				rows = append(rows, [2]string{"plaintext", base64Text(resp.GetPlaintext())})
			}
			rows = append(rows, [2]string{"encrypted_data_key", base64Text(resp.GetEncryptedDataKey())})
			return a.printFields(rows)
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&key, "key", "", "key to encrypt the data key under")
	fs.Var(&encCtx, "context", "encryption context pair k=v; repeat for more")
	fs.BoolVar(&noPlaintext, "no-plaintext", false, "return only the encrypted data key")
	a.addClientFlags(fs)
	_ = cmd.MarkFlagRequired("key")
	return cmd
}

func (a *app) signCmd() *cobra.Command {
	var (
		key     string
		digest  bool
		in, out string
	)
	cmd := &cobra.Command{
		Use:   "sign --key KEY",
		Short: "Sign a message (or a SHA-256 digest) with an ecdsa-p256 or ed25519 key",
		Long: `Sign up to 64 KiB with the key's primary version. With --digest the input is
a 32-byte SHA-256 digest of the message instead (ecdsa-p256 keys only).
Signatures are ASN.1 DER for ecdsa-p256 and 64 bytes for ed25519.
` + binaryHelp,
		Example: `  keybroker sign --key releases --in release.tar.gz.sha256sums --out sums.sig
  openssl dgst -sha256 -binary big.iso | keybroker sign --key releases --digest --out big.iso.sig`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			s, err := a.connect(cmd)
			if err != nil {
				return err
			}
			defer s.close()
			req := &kbv1.SignRequest{KeyId: key}
			data, err := a.readSignInput(in, digest)
			if err != nil {
				return err
			}
			if digest {
				req.Input = &kbv1.SignRequest_Digest{Digest: data}
			} else {
				req.Input = &kbv1.SignRequest_Message{Message: data}
			}
			resp, err := invoke(s, "sign", s.kb.Sign, req)
			if err != nil {
				return err
			}
			return a.emitBlob(out, resp.GetSignature(), func(b []byte) any {
				return signJSON{KeyID: resp.GetKeyId(), KeyVersion: resp.GetKeyVersion(), Signature: b}
			}, fmt.Sprintf("signed with key %s version %d", resp.GetKeyId(), resp.GetKeyVersion()))
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&key, "key", "", "key to sign with")
	fs.BoolVar(&digest, "digest", false, "the input is a 32-byte SHA-256 digest, not the message")
	addInFlag(fs, &in, "message")
	addOutFlag(fs, &out, "signature")
	a.addClientFlags(fs)
	_ = cmd.MarkFlagRequired("key")
	return cmd
}

func (a *app) verifyCmd() *cobra.Command {
	var (
		key           string
		version       uint32
		digest        bool
		signature, in string
	)
	cmd := &cobra.Command{
		Use:   "verify --key KEY --signature FILE",
		Short: "Verify a signature; exit 7 if it is not valid",
		Long: `Verify the signature in --signature over the message (or, with --digest,
the SHA-256 digest) read from --in. --key-version names the version that
signed (default: the primary). A valid signature exits 0; an invalid one
exits 7.`,
		Example: `  keybroker verify --key releases --signature sums.sig --in release.tar.gz.sha256sums
  openssl dgst -sha256 -binary big.iso | keybroker verify --key releases --digest --signature big.iso.sig`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if isStdio(signature) && isStdio(in) {
				return usageErrorf("--signature and --in cannot both be stdin")
			}
			s, err := a.connect(cmd)
			if err != nil {
				return err
			}
			defer s.close()
			sig, err := a.readInput(signature, maxTag, "signature")
			if err != nil {
				return err
			}
			req := &kbv1.VerifyRequest{KeyId: key, KeyVersion: version, Signature: sig}
			data, err := a.readSignInput(in, digest)
			if err != nil {
				return err
			}
			if digest {
				req.Input = &kbv1.VerifyRequest_Digest{Digest: data}
			} else {
				req.Input = &kbv1.VerifyRequest_Message{Message: data}
			}
			resp, err := invoke(s, "verify", s.kb.Verify, req)
			if err != nil {
				return err
			}
			return a.verdict("signature", key, resp.GetValid(), resp.GetKeyVersion())
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&key, "key", "", "key that signed")
	fs.Uint32Var(&version, "key-version", 0, "key version that signed; 0 means the primary")
	fs.BoolVar(&digest, "digest", false, "the input is a 32-byte SHA-256 digest, not the message")
	fs.StringVar(&signature, "signature", "", "file holding the signature")
	addInFlag(fs, &in, "message")
	a.addClientFlags(fs)
	_ = cmd.MarkFlagRequired("key")
	_ = cmd.MarkFlagRequired("signature")
	return cmd
}

func (a *app) macCmd() *cobra.Command {
	var (
		key     string
		in, out string
	)
	cmd := &cobra.Command{
		Use:   "mac --key KEY",
		Short: "Compute an HMAC-SHA256 of a message with an hmac-sha256 key",
		Long: `Compute the MAC of up to 64 KiB with the key's primary version.
` + binaryHelp,
		Example: `  keybroker mac --key tokens --in token.json --out token.mac
  echo -n 'user=42' | keybroker mac --key tokens --output json`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			s, err := a.connect(cmd)
			if err != nil {
				return err
			}
			defer s.close()
			m, err := a.readInput(in, maxMessage, "message")
			if err != nil {
				return err
			}
			resp, err := invoke(s, "mac", s.kb.GenerateMac, &kbv1.GenerateMacRequest{KeyId: key, Message: m})
			if err != nil {
				return err
			}
			return a.emitBlob(out, resp.GetMac(), func(b []byte) any {
				return macJSON{KeyID: resp.GetKeyId(), KeyVersion: resp.GetKeyVersion(), MAC: b}
			}, fmt.Sprintf("MAC with key %s version %d", resp.GetKeyId(), resp.GetKeyVersion()))
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&key, "key", "", "key to MAC with")
	addInFlag(fs, &in, "message")
	addOutFlag(fs, &out, "MAC")
	a.addClientFlags(fs)
	_ = cmd.MarkFlagRequired("key")
	return cmd
}

func (a *app) verifyMACCmd() *cobra.Command {
	var (
		key     string
		version uint32
		mac, in string
	)
	cmd := &cobra.Command{
		Use:   "verify-mac --key KEY --mac FILE",
		Short: "Verify a MAC; exit 7 if it is not valid",
		Long: `Verify the MAC in --mac over the message read from --in, in constant time
inside the broker. --key-version names the version that made it (default:
the primary). A valid MAC exits 0; an invalid one exits 7.`,
		Example: `  keybroker verify-mac --key tokens --mac token.mac --in token.json`,
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if isStdio(mac) && isStdio(in) {
				return usageErrorf("--mac and --in cannot both be stdin")
			}
			s, err := a.connect(cmd)
			if err != nil {
				return err
			}
			defer s.close()
			tag, err := a.readInput(mac, maxTag, "MAC")
			if err != nil {
				return err
			}
			m, err := a.readInput(in, maxMessage, "message")
			if err != nil {
				return err
			}
			resp, err := invoke(s, "verify-mac", s.kb.VerifyMac, &kbv1.VerifyMacRequest{KeyId: key, KeyVersion: version, Message: m, Mac: tag})
			if err != nil {
				return err
			}
			return a.verdict("MAC", key, resp.GetValid(), resp.GetKeyVersion())
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&key, "key", "", "key that made the MAC")
	fs.Uint32Var(&version, "key-version", 0, "key version that made the MAC; 0 means the primary")
	fs.StringVar(&mac, "mac", "", "file holding the MAC")
	addInFlag(fs, &in, "message")
	a.addClientFlags(fs)
	_ = cmd.MarkFlagRequired("key")
	_ = cmd.MarkFlagRequired("mac")
	return cmd
}

// verdict prints the result of verify or verify-mac; invalid exits 7.
func (a *app) verdict(what, key string, valid bool, version uint32) error {
	if a.jsonOutput() {
		if err := a.printJSON(verifyJSON{Valid: valid, KeyID: key, KeyVersion: version}); err != nil {
			return err
		}
	} else if valid {
		if _, err := fmt.Fprintf(a.env.stdout, "%s is valid (key %s version %d)\n", what, key, version); err != nil {
			return err
		}
	}
	if !valid {
		return verifyFailedf("%s is not valid for key %s version %d", what, key, version)
	}
	return nil
}

func (a *app) randomCmd() *cobra.Command {
	var (
		length uint32
		out    string
	)
	cmd := &cobra.Command{
		Use:   "random --length N",
		Short: "Get 1 to 1024 random bytes from the broker's root of trust",
		Long: `Get random bytes from the broker's root of trust.

The result goes raw to --out FILE, raw to stdout when it is not a terminal,
and as base64 when it is; with --output json it is a base64 field of the
JSON object.`,
		Example: `  keybroker random --length 32 --out seed.bin
  keybroker random --length 16 --output json | jq -r .random`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if length < 1 || length > maxRandom {
				return usageErrorf("--length must be 1 to %d, not %d", maxRandom, length)
			}
			s, err := a.connect(cmd)
			if err != nil {
				return err
			}
			defer s.close()
			resp, err := invoke(s, "random", s.kb.GenerateRandom, &kbv1.GenerateRandomRequest{Length: length})
			if err != nil {
				return err
			}
			return a.emitBlob(out, resp.GetRandom(), func(b []byte) any {
				return randomJSON{Random: b}
			}, "")
		},
	}
	fs := cmd.Flags()
	fs.Uint32Var(&length, "length", 0, "number of bytes, 1 to 1024")
	addOutFlag(fs, &out, "random bytes")
	a.addClientFlags(fs)
	_ = cmd.MarkFlagRequired("length")
	return cmd
}

// readDigest reads a SHA-256 digest for --digest.
func (a *app) readDigest(path string) ([]byte, error) {
	d, err := a.readInput(path, maxMessage, "digest")
	if err != nil {
		return nil, err
	}
	if len(d) != digestSize {
		return nil, invalidInputf("--digest wants a %d-byte SHA-256 digest as input, got %d bytes", digestSize, len(d))
	}
	return d, nil
}

// readSignInput reads what sign and verify work on: a 32-byte digest with
// --digest, else the message.
func (a *app) readSignInput(in string, digest bool) ([]byte, error) {
	if digest {
		return a.readDigest(in)
	}
	return a.readInput(in, maxMessage, "message")
}
