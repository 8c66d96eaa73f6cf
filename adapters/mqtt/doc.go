// Package mqtt implements ports.Notifier over MQTT v5 with paho.golang's
// autopaho connection manager.
//
// Four notifications are published, all with QoS 1 and never retained:
//
//	iotsupport/<client_id>/rotation    empty payload: start a credential rotation
//	                                   (fetch GET /iot/provisioning now)
//	iotsupport/<client_id>/config      empty payload: the device's config changed
//	                                   (fetch GET /iot/config)
//	iotsupport/<model_code>/firmware   {"firmware_version":"..."} (content type
//	                                   application/json): a new firmware was uploaded
//	iotsupport/<client_id>/firmware    {"firmware_version":"...","sha256":"..."}: a
//	                                   campaign assigned this device a firmware, or
//	                                   an abort took the assignment back (SPEC §16)
//
// The config notification carries no payload on purpose: the device has to
// fetch its config over the authenticated HTTP API anyway, and an empty
// message cannot leak configuration to whoever may subscribe to the topic.
//
// Every notification is written to autopaho's publish queue
// (PublishViaQueue) and sent by a background goroutine while the broker is
// reachable, so a broker outage never fails the caller: the Notifier methods
// return nil once the message is queued and the queue is flushed when the
// connection comes back. The queue lives in memory unless Config.QueueDir is
// set, in which case queue and MQTT session state are files and survive a
// restart of the process. The client keeps a stable client id and a non-zero
// session expiry so that QoS 1 messages in flight when a connection drops are
// resent after reconnecting — as long as the broker kept the session (a
// broker restarted without persistence forgets it, and messages that were in
// flight at that moment are lost; queued ones are not).
//
// Start never waits for the broker: it starts the connection manager, which
// connects and reconnects in the background (with exponential back-off)
// until Stop.
//
// DynSec implements ports.BrokerAccounts (SPEC §19) over Mosquitto's dynamic
// security plugin: requests on $CONTROL/dynamic-security/v1, answers on
// $CONTROL/dynamic-security/v1/response, as espmdm's own account, which must
// hold the plugin's admin role. Every device account has a role of its own
// (named like the account) that may subscribe to iotsupport/<client_id>/#
// and iotsupport/<model_code>/firmware, denies every other subscription and
// all publishing, and records its creation time in the account's textname.
// Unlike the notifier, a call fails (model.ErrUnavailable) when the broker
// cannot be reached: account changes are part of all-or-nothing device
// changes and are never queued. Mosquitto 2.0's plugin rewrites its whole
// state file after every change, so each change costs broker time in
// proportion to the number of accounts.
package mqtt
