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
// The download is audited; without its audit entry it fails.
func (s *Service) Provisioning(ctx context.Context, id int64) (ports.Provisioning, error) {
	d, p, err := s.deviceProvisioning(ctx, id)
	if err != nil {
		return ports.Provisioning{}, err
	}
	if err := s.auditDownload(ctx, d, "plain fields (JSON)", nil); err != nil {
		return ports.Provisioning{}, err
	}
	return p, nil
}

// deviceProvisioning reads device id and its provisioning fields; a failure
// to read the secret is audited.
func (s *Service) deviceProvisioning(ctx context.Context, id int64) (model.Device, ports.Provisioning, error) {
	d, err := s.d.Devices.GetDevice(ctx, id)
	if err != nil {
		return d, ports.Provisioning{}, fmt.Errorf("provisioning of device %d: %w", id, err)
	}
	p, err := s.provisioning(ctx, d)
	if err != nil {
		s.auditFailure(ctx, s.deviceEntry(ctx, model.AuditProvisioningDownloaded, d, ""), err)
		return d, ports.Provisioning{}, err
	}
	return d, p, nil
}

// auditDownload records that d's provisioning data (its secret) was handed
// out as what (or that it was not, when cause is set).
func (s *Service) auditDownload(ctx context.Context, d model.Device, what string, cause error) error {
	e := s.deviceEntry(ctx, model.AuditProvisioningDownloaded, d, what)
	if cause != nil {
		s.auditFailure(ctx, e, cause)
		return nil
	}
	if err := s.appendAudit(ctx, e); err != nil {
		return fmt.Errorf("provisioning of device %d: %w", d.ID, err)
	}
	return nil
}

// provisioningWith is the device's provisioning fields with secret (and
// its broker account's password, when it has one).
func (s *Service) provisioningWith(d model.Device, secret string) (ports.Provisioning, error) {
	password, err := s.brokerPassword(d)
	if err != nil {
		return ports.Provisioning{}, fmt.Errorf("provisioning of device %d: %w", d.ID, err)
	}
	return ports.Provisioning{
		DeviceKey:    d.Key,
		ClientID:     d.ClientID(),
		ClientSecret: secret,
		TokenURL:     s.cfg.TokenURL,
		BaseURL:      s.cfg.BaseURL,
		MQTTURL:      s.cfg.MQTTURL,
		MQTTPassword: password,
		WiFiSSID:     s.cfg.WiFiSSID,
		WiFiPassword: s.cfg.WiFiPassword,
	}, nil
}

// ProvisioningNVS returns the device's provisioning data as a whole
// ESP-IDF NVS partition (format version 2) of size bytes: namespace "prov"
// with string entries device_key, client_id, client_secret, token_url,
// base_url, mqtt_url, mqtt_password, wifi_ssid, wifi_password in that order, empty
// optional ones left out.
func (s *Service) ProvisioningNVS(ctx context.Context, id int64, size int) ([]byte, error) {
	if size < MinNVSSize || size > MaxNVSSize || size%nvsPageSize != 0 {
		return nil, model.Invalid("size", "must be a multiple of 0x%x between 0x%x and 0x%x, got 0x%x",
			nvsPageSize, MinNVSSize, MaxNVSSize, size)
	}
	d, p, err := s.deviceProvisioning(ctx, id)
	if err != nil {
		return nil, err
	}
	what := fmt.Sprintf("NVS partition of 0x%x bytes", size)
	img, err := nvs.Encode(nvs.Strings(NVSNamespace, nvsPairs(p)...), nvs.Options{Size: size, Version: nvs.Version2})
	switch {
	case errors.Is(err, nvs.ErrNoSpace):
		err = model.Invalid("size", "0x%x is too small for the provisioning data", size)
	case err != nil:
		// The nvs error may quote a value (a secret): keep only its kind.
		err = fmt.Errorf("provisioning of device %d: the data cannot be stored as NVS strings", id)
	}
	if aerr := s.auditDownload(ctx, d, what, err); aerr != nil {
		return nil, aerr
	}
	if err != nil {
		return nil, err
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
		{Key: "mqtt_password", Value: p.MQTTPassword},
		{Key: "wifi_ssid", Value: p.WiFiSSID},
		{Key: "wifi_password", Value: p.WiFiPassword},
	} {
		if kv.Value != "" {
			pairs = append(pairs, kv)
		}
	}
	return pairs
}
