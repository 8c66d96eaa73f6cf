package mdm

import (
	"context"
	"errors"
	"fmt"

	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/nvs"
	"github.com/espmdm/espmdm/ports"
)

// Provisioning partition sizes (SPEC §2).
const (
	MinNVSSize     = 0x3000
	MaxNVSSize     = 0x100000
	DefaultNVSSize = 0x6000
	nvsPageSize    = 0x1000
	// NVSNamespace is the namespace of the provisioning entries.
	NVSNamespace = "prov"
)

// Provisioning returns what the device needs to reach espmdm, including its
// current client secret.
func (s *Service) Provisioning(ctx context.Context, id int64) (ports.Provisioning, error) {
	d, err := s.d.Devices.GetDevice(ctx, id)
	if err != nil {
		return ports.Provisioning{}, fmt.Errorf("provisioning of device %d: %w", id, err)
	}
	return s.provisioning(ctx, d)
}

// provisioningWith is the device's provisioning fields with secret.
func (s *Service) provisioningWith(d model.Device, secret string) ports.Provisioning {
	return ports.Provisioning{
		DeviceKey:    d.Key,
		ClientID:     d.ClientID(),
		ClientSecret: secret,
		TokenURL:     s.cfg.TokenURL,
		BaseURL:      s.cfg.BaseURL,
		MQTTURL:      s.cfg.MQTTURL,
		WiFiSSID:     s.cfg.WiFiSSID,
		WiFiPassword: s.cfg.WiFiPassword,
	}
}

// ProvisioningNVS returns the device's provisioning data as a whole
// ESP-IDF NVS partition (format version 2) of size bytes: namespace "prov"
// with string entries device_key, client_id, client_secret, token_url,
// base_url, mqtt_url, wifi_ssid, wifi_password in that order, empty
// optional ones left out.
func (s *Service) ProvisioningNVS(ctx context.Context, id int64, size int) ([]byte, error) {
	if size < MinNVSSize || size > MaxNVSSize || size%nvsPageSize != 0 {
		return nil, model.Invalid("size", "must be a multiple of 0x%x between 0x%x and 0x%x, got 0x%x",
			nvsPageSize, MinNVSSize, MaxNVSSize, size)
	}
	p, err := s.Provisioning(ctx, id)
	if err != nil {
		return nil, err
	}
	img, err := nvs.Encode(nvs.Strings(NVSNamespace, nvsPairs(p)...), nvs.Options{Size: size, Version: nvs.Version2})
	switch {
	case errors.Is(err, nvs.ErrNoSpace):
		return nil, model.Invalid("size", "0x%x is too small for the provisioning data", size)
	case err != nil:
		// The nvs error may quote a value (a secret): keep only its kind.
		return nil, fmt.Errorf("provisioning of device %d: the data cannot be stored as NVS strings", id)
	}
	return img, nil
}

// nvsPairs lists the provisioning fields in NVS order, leaving out empty
// optional ones.
func nvsPairs(p ports.Provisioning) []nvs.KV {
	pairs := []nvs.KV{
		{Key: "device_key", Value: p.DeviceKey},
		{Key: "client_id", Value: p.ClientID},
		{Key: "client_secret", Value: p.ClientSecret},
	}
	for _, kv := range []nvs.KV{
		{Key: "token_url", Value: p.TokenURL},
		{Key: "base_url", Value: p.BaseURL},
		{Key: "mqtt_url", Value: p.MQTTURL},
		{Key: "wifi_ssid", Value: p.WiFiSSID},
		{Key: "wifi_password", Value: p.WiFiPassword},
	} {
		if kv.Value != "" {
			pairs = append(pairs, kv)
		}
	}
	return pairs
}
