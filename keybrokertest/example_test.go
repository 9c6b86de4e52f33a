package keybrokertest_test

import (
	"context"
	"fmt"
	"log"

	"github.com/keybroker/keybroker/keybrokertest"
)

// A test starts its cluster with Start and gets clients from it; both are
// stopped when the test ends (see the README's example). Without a
// testing.TB — in a TestMain that shares one cluster between a package's
// tests, or here — New and Close do the same.
func Example() {
	ctx := context.Background()
	kb, err := keybrokertest.New(ctx, keybrokertest.WithKeys("payments"))
	if err != nil {
		log.Fatal(err)
	}
	defer kb.Close()

	// The app principal at the first edge (edge-us), which seals locally.
	app, err := kb.NewClient(ctx, keybrokertest.At(kb.EdgeAddr("us")))
	if err != nil {
		log.Fatal(err)
	}
	defer app.Close()
	ct, err := app.Encrypt(ctx, "payments", []byte("card 4111"), map[string]string{"order": "7"})
	if err != nil {
		log.Fatal(err)
	}

	// The same principal at the central node opens it.
	central, err := kb.NewClient(ctx, keybrokertest.At(kb.CentralAddr()))
	if err != nil {
		log.Fatal(err)
	}
	defer central.Close()
	pt, err := central.Decrypt(ctx, ct.Ciphertext, map[string]string{"order": "7"})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s under %s version %d\n", pt.Plaintext, pt.KeyID, pt.Version)
	// Output: card 4111 under payments version 1
}
