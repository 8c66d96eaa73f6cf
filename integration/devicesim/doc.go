// Package devicesim simulates ESP32 devices talking to espmdm, cheaply
// enough to run fleets of thousands in one process.
//
// A Fleet holds what every device shares: one *http.Client (a keep-alive
// pool sized for the fleet's concurrency) and one MQTT v5 connection
// (autopaho) subscribed to iotsupport/+/rotation, iotsupport/+/config and
// iotsupport/+/firmware. Messages are dispatched to devices by client id
// (rotation, config, and firmware: a campaign's nudge to one device) or
// model code (firmware), and the work they cause runs on a bounded pool of
// workers (Config.Concurrency): an idle device costs a struct, not a
// goroutine.
//
// A Device boots from the bytes of its NVS provisioning partition (namespace
// "prov": device_key, client_id, client_secret, token_url, base_url,
// mqtt_url), as espmdm's GET /api/devices/{id}/provisioning hands them out.
// It follows the README's steps for firmware authors to the letter: it keeps
// two secret slots, current and next, which are what it persisted and all
// that survives a simulated crash. On a nudge it rotates: fetch GET
// /iot/provisioning, persist the new secret as next, get a token with next,
// POST /iot/provisioning/ack with the secret's SHA-256, promote next to
// current on 204 (on 409, or a refused token, erase next and keep
// current). At boot, and whenever it needs a token, it tries current, then
// next; when only next works it promotes it at once and acks it (204 or
// 409 alike: Keycloak accepted it).
//
// Boot (Fleet.BootAll for all) is a power-on: a token, then a state report
// (SPEC §15). Firmware follows the component when Config.FollowFirmware is
// set: at boot and on either firmware notice, Update asks GET
// /iot/firmware-version for the device's effective firmware and, when it is
// another version, downloads it (resuming a cut download), checks its
// SHA-256, installs it, reboots into it and reports it pending_verify, then
// confirmed (valid). A version in BadFirmware (Config, for every device, or
// Behaviour, for one) is installed and then rolled back: the device reports
// its previous version, valid, with ota {target, result: rolled_back}, and
// does not fetch that image again, as the component does.
//
// Behaviour changes what a device does: Offline ignores everything, Slow
// waits before each step, Legacy follows the reviewed design's single-slot
// steps (fetch, overwrite, reboot, token, GET /iot/config), and Crash makes
// it crash after the fetch (the fetched secret is lost) or after persisting
// it (before the ack), once or on every rotation. A crashed device reboots
// from its persisted slots (after Behaviour.RebootDelay; Behaviour.StayDown
// keeps it off until Boot): a token, then GET /iot/config.
//
// Every device meters its lockouts: the device-seconds during which it
// needed a token and Keycloak accepted none of the secrets it holds. A
// locked-out device tries again every Config.LockoutRetry, so the meter
// stops when a secret works again. Fleet.CheckAll asks Keycloak for every
// device at the end of a run and reports the devices still locked out.
//
// Secrets and tokens are never logged, printed or put in an error.
// Device.Secrets hands them to a test that must check other logs for them.
package devicesim
