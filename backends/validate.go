package backends

import "fmt"

// CheckEncrypt validates Encrypt arguments the same way for every backend:
// limits are those of the most restrictive backend, so behaviour does not
// depend on which root of trust is configured.
func CheckEncrypt(scheme, key string, plaintext, aad []byte) error {
	switch {
	case key == "":
		return Errorf(scheme, "encrypt", key, ErrInvalidArgument, "empty key name")
	case len(plaintext) == 0:
		return Errorf(scheme, "encrypt", key, ErrInvalidArgument, "empty plaintext")
	case len(plaintext) > MaxEncryptInput:
		return Errorf(scheme, "encrypt", key, ErrInvalidArgument, "plaintext is %d bytes, limit %d", len(plaintext), MaxEncryptInput)
	case len(aad) > MaxAAD:
		return Errorf(scheme, "encrypt", key, ErrInvalidArgument, "aad is %d bytes, limit %d", len(aad), MaxAAD)
	}
	return nil
}

// CheckDecrypt validates Decrypt arguments the same way for every backend.
func CheckDecrypt(scheme, key string, ciphertext, aad []byte) error {
	switch {
	case key == "":
		return Errorf(scheme, "decrypt", key, ErrInvalidArgument, "empty key name")
	case len(ciphertext) == 0:
		return Errorf(scheme, "decrypt", key, ErrInvalidArgument, "empty ciphertext")
	case len(ciphertext) > MaxCiphertext:
		return Errorf(scheme, "decrypt", key, ErrInvalidArgument, "ciphertext is %d bytes, limit %d", len(ciphertext), MaxCiphertext)
	case len(aad) > MaxAAD:
		return Errorf(scheme, "decrypt", key, ErrInvalidArgument, "aad is %d bytes, limit %d", len(aad), MaxAAD)
	}
	return nil
}

// CheckMAC validates MAC and VerifyMAC arguments.
func CheckMAC(scheme, op, key string, data []byte) error {
	switch {
	case key == "":
		return Errorf(scheme, op, key, ErrInvalidArgument, "empty key name")
	case len(data) == 0:
		return Errorf(scheme, op, key, ErrInvalidArgument, "empty data")
	case len(data) > MaxMACInput:
		return Errorf(scheme, op, key, ErrInvalidArgument, "data is %d bytes, limit %d", len(data), MaxMACInput)
	}
	return nil
}

// CheckRandom validates a GenerateRandom length.
func CheckRandom(scheme string, n int) error {
	if n < 1 || n > MaxRandom {
		return NewError(scheme, "generate-random", "", ErrInvalidArgument,
			fmt.Errorf("length %d out of range 1..%d", n, MaxRandom))
	}
	return nil
}

// CheckSign validates Sign arguments. For ecdsa-p256 keys the digest must be
// 32 bytes; callers that know the algorithm check that too.
func CheckSign(scheme, key string, digest []byte) error {
	switch {
	case key == "":
		return Errorf(scheme, "sign", key, ErrInvalidArgument, "empty key name")
	case len(digest) == 0:
		return Errorf(scheme, "sign", key, ErrInvalidArgument, "empty digest")
	case len(digest) > MaxMACInput:
		return Errorf(scheme, "sign", key, ErrInvalidArgument, "digest is %d bytes, limit %d", len(digest), MaxMACInput)
	}
	return nil
}

// CheckDataKey validates GenerateDataKey arguments.
func CheckDataKey(scheme, key string, aad []byte) error {
	switch {
	case key == "":
		return Errorf(scheme, "generate-data-key", key, ErrInvalidArgument, "empty key name")
	case len(aad) > MaxAAD:
		return Errorf(scheme, "generate-data-key", key, ErrInvalidArgument, "aad is %d bytes, limit %d", len(aad), MaxAAD)
	}
	return nil
}
