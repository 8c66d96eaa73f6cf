package esp32image_test

import (
	"errors"
	"fmt"
	"log"
	"os"

	"github.com/espmdm/espmdm/esp32image"
)

func ExampleParse() {
	data, err := os.ReadFile("testdata/images/esp32s3-4seg-sha.bin")
	if err != nil {
		log.Fatal(err)
	}
	img, err := esp32image.Parse(data)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("chip:", img.Header.ChipID)
	fmt.Println("segments:", len(img.Segments))
	fmt.Println("project:", img.AppDesc.ProjectName)
	fmt.Println("version:", img.AppDesc.Version)
	fmt.Println("built:", img.AppDesc.Date, img.AppDesc.Time, "with", img.AppDesc.IDFVersion)
	fmt.Println("digest valid:", *img.SHA256Valid)
	// Output:
	// chip: esp32s3
	// segments: 4
	// project: prov-demo-esp32s3
	// version: 1.4.2-rc1
	// built: Oct 30 2024 22:07:04 with v5.4.1-dirty
	// digest valid: true
}

func ExampleParseLenient() {
	data, err := os.ReadFile("testdata/images/esp32-3seg-badsum.bin")
	if err != nil {
		log.Fatal(err)
	}
	img, err := esp32image.ParseLenient(data)
	var fe *esp32image.FormatError
	if errors.As(err, &fe) {
		fmt.Printf("invalid at 0x%x: %s\n", fe.Off, fe.Msg)
	}
	fmt.Println("version:", img.AppDesc.Version, "checksum valid:", img.ChecksumValid)
	// Output:
	// invalid at 0x26f: checksum 0x6a does not match computed 0x6b
	// version: qa-test-v5.0-20220830-4-g4532e6 checksum valid: false
}
