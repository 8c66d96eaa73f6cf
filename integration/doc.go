// Package integration starts the real services espmdm needs — PostgreSQL,
// Keycloak and Mosquitto — on free loopback ports, bootstraps the Keycloak
// realm, and stops everything again. It is exported so other Go projects can
// boot the same stack in their tests.
//
// Two launchers sit behind one interface: "processes" runs the Debian
// packages of PostgreSQL and Mosquitto and Keycloak's official distribution
// (fetched from Maven Central with mvn) as child processes, and "containers"
// runs the official images (or others named by Options.Images or
// $ESPMDM_*_IMAGE, e.g. the local stand-ins that integration/images builds)
// with testcontainers-go. "auto" picks containers when a Docker engine
// answers and has or can pull the images, and processes otherwise, saying
// why in one line.
//
// The broker runs Mosquitto's dynamic security plugin (SPEC §19) with an
// account for espmdm (Stack.MQTTAdminUser, in the MQTT_URL of ServeEnv and
// Env; Stack.MQTTURL, what devices get, has none), which manages the device
// accounts and is the only one that may publish on iotsupport/#. Whether
// clients without an account are let in is Options.MQTTAnonymous
// ($ESPMDM_STACK_MQTT_ANONYMOUS, default DefaultMQTTAnonymous). The plugin's
// state file lives in the broker's directory, so accounts survive a stop and
// start of the service and, with a data directory, the stack. StartBroker
// (NewBroker in tests) starts a broker of its own the same way.
//
// With Options.S3 a stack also runs S3Proxy (an S3-compatible server on its
// filesystem backend, fetched from Maven Central like Keycloak) with one
// bucket, for the S3 blob store; both launchers run it as a local Java
// process.
//
// Child processes run in their own process groups, are signalled when the
// parent dies (Linux parent-death signal), and are stopped by group, so a
// test run that fails, panics or is interrupted leaves nothing behind.
//
// In tests, call RunTests (RunTestsWith for options such as S3) from
// TestMain and Shared from each test: a test
// binary attaches to the stack named by ESPMDM_STACK_ENV (an env file written
// by the withstack command that `make test` uses, so one stack serves the
// whole run) or starts a stack of its own.
package integration
