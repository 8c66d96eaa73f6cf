package nvs_test

import (
	"testing"

	"github.com/espmdm/espmdm/nvs"
)

func BenchmarkEncodeProvisioning(b *testing.B) {
	entries := provisioning()
	b.ReportAllocs()
	b.SetBytes(0x6000)
	for b.Loop() {
		if _, err := nvs.Encode(entries, nvs.Options{Size: 0x6000}); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecodeProvisioning(b *testing.B) {
	img, err := nvs.Encode(provisioning(), nvs.Options{Size: 0x6000})
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.SetBytes(int64(len(img)))
	for b.Loop() {
		if _, err := nvs.Decode(img); err != nil {
			b.Fatal(err)
		}
	}
}
