// Package httpapi is espmdm's HTTP adapter: the admin API under /api (SPEC
// §2), the device API under /iot (SPEC §3), health probes and Prometheus
// metrics, served by Fiber v2.
//
// It drives the inbound ports (ports.ModelAdmin, FirmwareAdmin,
// DeviceAdmin, ProvisioningAdmin, IdentityAdmin, Rotation and AuditReader
// under /api, ports.DeviceAPI under /iot) and checks bearer tokens with
// ports.TokenVerifier; it never imports the core or other adapters. Every
// error becomes an application/problem+json response in exactly one place
// (errors.go); only model.ValidationError reasons and texts written in
// this package reach the client.
//
// The OpenAPI 3.1 description of every route is served at
// /api/openapi.json and rendered, without any external asset, at /api/docs.
package httpapi
