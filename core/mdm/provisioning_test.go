package mdm_test

import (
	"slices"
	"testing"

	"github.com/espmdm/espmdm/core/mdm"
	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/nvs"
	"github.com/espmdm/espmdm/ports"
)

func TestProvisioning(t *testing.T) {
	e := newEnv(t, withConfig(func(c *mdm.Config) { c.WiFiSSID = "lab"; c.WiFiPassword = "hunter22" }))
	m := e.model(t, "lamp", "")
	d := e.device(t, m, `{}`)
	secret, err := e.idp.ClientSecret(t.Context(), d.ClientID())
	if err != nil {
		t.Fatal(err)
	}
	p, err := e.svc.Provisioning(t.Context(), d.ID)
	if err != nil {
		t.Fatal(err)
	}
	want := ports.Provisioning{
		DeviceKey: d.Key, ClientID: "iotdevice-lamp-" + d.Key, ClientSecret: secret,
		TokenURL: "https://kc.example/realms/iot/protocol/openid-connect/token", BaseURL: "https://mdm.example",
		MQTTURL: "mqtts://mqtt.example:8883", WiFiSSID: "lab", WiFiPassword: "hunter22",
	}
	if p != want {
		t.Errorf("got %+v, want %+v", p, want)
	}
	_, err = e.svc.Provisioning(t.Context(), d.ID+1)
	wantIs(t, err, model.ErrNotFound)
}

func TestProvisioningNVS(t *testing.T) {
	for _, tc := range []struct {
		name     string
		cfg      func(*mdm.Config)
		size     int
		wantKeys []string
	}{
		{"all fields", func(c *mdm.Config) { c.WiFiSSID = "lab"; c.WiFiPassword = "pw" }, mdm.DefaultNVSSize,
			[]string{"device_key", "client_id", "client_secret", "token_url", "base_url", "mqtt_url", "wifi_ssid", "wifi_password"}},
		{"no wifi", func(*mdm.Config) {}, mdm.MinNVSSize,
			[]string{"device_key", "client_id", "client_secret", "token_url", "base_url", "mqtt_url"}},
		{"only mqtt and ssid", func(c *mdm.Config) { c.TokenURL, c.BaseURL, c.WiFiSSID = "", "", "lab" }, mdm.MaxNVSSize,
			[]string{"device_key", "client_id", "client_secret", "mqtt_url", "wifi_ssid"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, withConfig(tc.cfg))
			m := e.model(t, "lamp", "")
			d := e.device(t, m, `{}`)
			p, err := e.svc.Provisioning(t.Context(), d.ID)
			if err != nil {
				t.Fatal(err)
			}
			img, err := e.svc.ProvisioningNVS(t.Context(), d.ID, tc.size)
			if err != nil {
				t.Fatalf("ProvisioningNVS: %v", err)
			}
			if len(img) != tc.size {
				t.Errorf("image is %d bytes, want %d", len(img), tc.size)
			}
			entries, err := nvs.Decode(img)
			if err != nil {
				t.Fatalf("decode: %v", err)
			}
			values := map[string]string{
				"device_key": p.DeviceKey, "client_id": p.ClientID, "client_secret": p.ClientSecret,
				"token_url": p.TokenURL, "base_url": p.BaseURL, "mqtt_url": p.MQTTURL,
				"wifi_ssid": p.WiFiSSID, "wifi_password": p.WiFiPassword,
			}
			var keys []string
			for _, en := range entries {
				if en.Type == nvs.TypeNamespace {
					if en.Namespace != "prov" {
						t.Errorf("namespace %q", en.Namespace)
					}
					continue
				}
				if en.Namespace != "prov" || en.Type != nvs.TypeString || en.Value != values[en.Key] {
					t.Errorf("entry %s, want prov/%s string %q", en, en.Key, values[en.Key])
				}
				keys = append(keys, en.Key)
			}
			if !slices.Equal(keys, tc.wantKeys) {
				t.Errorf("keys %v, want %v", keys, tc.wantKeys)
			}
			// Byte for byte what the encoder makes of the same entries.
			var kvs []nvs.KV
			for _, k := range tc.wantKeys {
				kvs = append(kvs, nvs.KV{Key: k, Value: values[k]})
			}
			want, err := nvs.Encode(nvs.Strings("prov", kvs...), nvs.Options{Size: tc.size})
			if err != nil || !slices.Equal(img, want) {
				t.Errorf("image differs from nvs.Encode of the same entries (%v)", err)
			}
		})
	}
}

func TestProvisioningNVSSize(t *testing.T) {
	e := newEnv(t)
	m := e.model(t, "lamp", "")
	d := e.device(t, m, `{}`)
	for _, size := range []int{0, -0x3000, 0x2000, 0x3001, 0x3800, 0x101000, 0x200000} {
		_, err := e.svc.ProvisioningNVS(t.Context(), d.ID, size)
		wantValidation(t, err, "size")
	}
	_, err := e.svc.ProvisioningNVS(t.Context(), d.ID+1, mdm.DefaultNVSSize)
	wantIs(t, err, model.ErrNotFound)
}
