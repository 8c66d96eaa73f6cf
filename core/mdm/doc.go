// Package mdm holds espmdm's use cases: device models, firmware, devices,
// their identities in the identity provider, provisioning data, the
// reconciler and what authenticated devices may do.
//
// A *Service implements every inbound port, one per consumer: the admin
// API's (ports.ModelAdmin, FirmwareAdmin, DeviceAdmin, ProvisioningAdmin,
// IdentityAdmin, Rotation, AuditReader), the reconciler's
// (ports.Reconciler) and the /iot API's (ports.DeviceAPI), on top of the
// outbound ports it is given in Deps. It needs no framework: build it from
// adapters, or from the fakes in ports/portstest in tests.
//
// The core returns errors and never logs. Errors it handles without
// returning them (a failed cleanup, a notification the broker refused) go
// to Deps.OnError so that the application can log them.
package mdm
