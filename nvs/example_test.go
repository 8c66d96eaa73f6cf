package nvs_test

import (
	"fmt"
	"log"
	"os"
	"strings"

	"github.com/espmdm/espmdm/nvs"
)

// A provisioning partition: string entries in namespace prov, 0x6000 bytes,
// format version 2, byte for byte what ESP-IDF's generator writes.
func ExampleEncode() {
	img, err := nvs.Encode(nvs.Strings("prov",
		nvs.KV{Key: "device_key", Value: "dk_7f3a9c2e41b84d0f"},
		nvs.KV{Key: "mqtt_url", Value: "mqtts://mqtt.example.com:8883"},
	), nvs.Options{Size: 0x6000})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%d bytes, page 0 header % x\n", len(img), img[:9])
	// Output: 24576 bytes, page 0 header fe ff ff ff 00 00 00 00 fe
}

func ExampleDecode() {
	img, err := nvs.Encode([]nvs.Entry{
		{Namespace: "cfg", Key: "retries", Type: nvs.TypeU8, Value: uint8(3)},
		{Namespace: "cfg", Key: "name", Type: nvs.TypeString, Value: "sensor-1"},
		{Namespace: "cal", Key: "table", Type: nvs.TypeBlob, Value: []byte{1, 2, 3}},
	}, nvs.Options{Size: nvs.MinSize})
	if err != nil {
		log.Fatal(err)
	}
	entries, err := nvs.Decode(img)
	if err != nil {
		log.Fatal(err)
	}
	for _, e := range entries {
		fmt.Println(e)
	}
	// Output:
	// namespace cfg
	// cfg/retries u8 3
	// cfg/name string "sensor-1"
	// namespace cal
	// cal/table blob 010203
}

func ExampleReadCSV() {
	src := `key,type,encoding,value
# provisioning data
prov,namespace,,
device_key,data,string,dk_7f3a9c2e41b84d0f
boot_count,data,u32,0
ca_cert,data,base64,MIIB
`
	entries, err := nvs.ReadCSV(strings.NewReader(src), os.DirFS("."))
	if err != nil {
		log.Fatal(err)
	}
	for _, e := range entries {
		fmt.Println(e)
	}
	// Output:
	// namespace prov
	// prov/device_key string "dk_7f3a9c2e41b84d0f"
	// prov/boot_count u32 0
	// prov/ca_cert blob 308201
}

func ExampleWriteCSV() {
	err := nvs.WriteCSV(os.Stdout, []nvs.Entry{
		{Namespace: "prov", Key: "wifi_ssid", Type: nvs.TypeString, Value: "Lab, 2.4G"},
		{Namespace: "prov", Key: "port", Type: nvs.TypeU16, Value: uint16(8883)},
	})
	if err != nil {
		log.Fatal(err)
	}
	// Output:
	// key,type,encoding,value
	// prov,namespace,,
	// wifi_ssid,data,string,"Lab, 2.4G"
	// port,data,u16,8883
}
