package esp32image_test

import (
	"bytes"
	"testing"

	"github.com/espmdm/espmdm/esp32image"
	"github.com/espmdm/espmdm/esp32image/esp32imagetest"
)

// benchImage is a ~1.5 MB ESP32-S3 image with a digest, laid out like a
// real application: app descriptor and rodata, DRAM, IRAM, a large text
// segment.
func benchImage(b *testing.B) []byte {
	b.Helper()
	desc := esp32imagetest.SampleDesc(esp32image.ChipESP32S3)
	spec := esp32imagetest.New(esp32image.ChipESP32S3, 5, true, &desc)
	spec.Segments[0].Data = append(spec.Segments[0].Data, esp32imagetest.Filler(1, 400_000)...)
	spec.Segments[1].Data = esp32imagetest.Filler(2, 20_000)
	spec.Segments[2].Data = esp32imagetest.Filler(3, 80_000)
	spec.Segments[3].Data = esp32imagetest.Filler(4, 1_000_000)
	data := spec.Bytes()
	if _, err := esp32image.Parse(data); err != nil {
		b.Fatal(err)
	}
	return data
}

func BenchmarkParse(b *testing.B) {
	data := benchImage(b)
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := esp32image.Parse(data); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkParseReaderAt(b *testing.B) {
	data := benchImage(b)
	r := bytes.NewReader(data)
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := esp32image.ParseReaderAt(r, int64(len(data))); err != nil {
			b.Fatal(err)
		}
	}
}
