package fsstore_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"

	"github.com/espmdm/espmdm/adapters/fsstore"
	"github.com/espmdm/espmdm/ports"
)

func Example() {
	dir, err := os.MkdirTemp("", "firmware")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(dir)

	store, err := fsstore.New(dir) // FIRMWARE_DIR
	if err != nil {
		panic(err)
	}
	defer store.Close()

	ctx := context.Background()
	image := []byte("an ESP32 application image")
	sum := sha256.Sum256(image)
	digest := hex.EncodeToString(sum[:])
	// A firmware binary of the device model thermo_v2.
	key := ports.BlobKey{Kind: ports.BlobFirmware, Namespace: "thermo_v2", SHA256: digest}
	if _, err := store.PutBlob(ctx, key, bytes.NewReader(image), int64(len(image)), 0); err != nil {
		panic(err)
	}

	blob, err := store.OpenBlob(ctx, key)
	if err != nil {
		panic(err)
	}
	defer blob.Close()
	if _, err := blob.Seek(3, io.SeekStart); err != nil { // as for a Range request
		panic(err)
	}
	rest, err := io.ReadAll(blob)
	if err != nil {
		panic(err)
	}
	fmt.Println(blob.Size(), string(rest))
	// Output: 26 ESP32 application image
}
