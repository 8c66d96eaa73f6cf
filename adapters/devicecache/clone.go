package devicecache

import (
	"bytes"
	"slices"

	"github.com/espmdm/espmdm/core/model"
)

// cloneDevice copies d with nothing shared: what the cache holds cannot be
// changed through a device it handed out, nor the other way round. A new
// field of model.Device that refers to memory (a slice, a pointer, a map)
// must be copied here: TestCloneSharesNothing fails until it is.
func cloneDevice(d model.Device) model.Device {
	d.Config = bytes.Clone(d.Config)
	d.SecretCreatedAt = clonePtr(d.SecretCreatedAt)
	d.LastRotationAttemptAt = clonePtr(d.LastRotationAttemptAt)
	d.LastRotationFetchAt = clonePtr(d.LastRotationFetchAt)
	d.LastRotationRenudgeAt = clonePtr(d.LastRotationRenudgeAt)
	d.LastRotationCompletedAt = clonePtr(d.LastRotationCompletedAt)
	d.LastSeenAt = clonePtr(d.LastSeenAt)
	d.NewSecretAt = clonePtr(d.NewSecretAt)
	d.IATAfter = clonePtr(d.IATAfter)
	d.PreviousSecret = bytes.Clone(d.PreviousSecret)
	d.MQTTPassword = bytes.Clone(d.MQTTPassword)
	d.Reported = cloneReport(d.Reported)
	d.GenerationIntentAt = clonePtr(d.GenerationIntentAt)
	d.Tags = slices.Clone(d.Tags)
	d.AssignedFirmwareID = clonePtr(d.AssignedFirmwareID)
	return d
}

func clonePtr[T any](p *T) *T {
	if p == nil {
		return nil
	}
	c := *p
	return &c
}

func cloneReport(r *model.StateReport) *model.StateReport {
	if r == nil {
		return nil
	}
	c := *r
	c.SecureVersion = clonePtr(r.SecureVersion)
	c.OTA = clonePtr(r.OTA)
	c.UptimeS = clonePtr(r.UptimeS)
	c.FreeHeap = clonePtr(r.FreeHeap)
	c.RSSI = clonePtr(r.RSSI)
	return &c
}
