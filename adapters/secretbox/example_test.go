package secretbox_test

import (
	"fmt"

	"github.com/espmdm/espmdm/adapters/secretbox"
)

func Example() {
	// SECRET_KEY, e.g. from `openssl rand -hex 32`.
	box, err := secretbox.NewFromString("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f")
	if err != nil {
		panic(err)
	}
	sealed, err := box.Seal([]byte("previous client secret"))
	if err != nil {
		panic(err)
	}
	plain, err := box.Open(sealed)
	if err != nil {
		panic(err)
	}
	fmt.Println(len(sealed), string(plain))
	// Output: 51 previous client secret
}
