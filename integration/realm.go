package integration

import (
	_ "embed"
)

// realmJSON is the Keycloak realm import. Its ${ESPMDM_*} placeholders are
// resolved by Keycloak from the environment, so secrets never hit the disk.
//
//go:embed realm/iot-realm.json
var realmJSON []byte

// RealmJSON returns the realm import document the stack bootstraps Keycloak
// with. Placeholders are resolved from the variables of RealmEnv.
func RealmJSON() []byte { return append([]byte(nil), realmJSON...) }
