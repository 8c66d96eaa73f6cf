package keycloak_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"time"

	"github.com/espmdm/espmdm/adapters/keycloak"
	"github.com/espmdm/espmdm/core/model"
)

// A device identity: create the client, hand its secret to the device, and
// check the tokens the device then presents.
func Example() {
	ctx := context.Background()
	idp, err := keycloak.NewAdmin(keycloak.AdminConfig{
		BaseURL:        "http://127.0.0.1:18080",
		Realm:          "iot",
		ClientID:       "iotsupport-admin",
		ClientSecret:   "from-the-environment",
		DeviceAudience: "espmdm-iot",
		Observe: func(op string, err error, d time.Duration) {
			// count op and err, observe d
		},
	})
	if err != nil {
		log.Fatal(err)
	}
	secret, err := idp.CreateClient(ctx, model.ClientID("esp32_c3", "k3y12345"))
	switch {
	case errors.Is(err, model.ErrConflict):
		// the client exists already
	case errors.Is(err, model.ErrUnavailable):
		// Keycloak is down or the admin client is misconfigured
	case err != nil:
		log.Fatal(err)
	}
	_ = secret // goes into the device's provisioning data, never into logs

	verifier, err := keycloak.NewVerifier(keycloak.VerifierConfig{
		IssuerURL:      "http://127.0.0.1:18080/realms/iot",
		DeviceAudience: "espmdm-iot",
	})
	if err != nil {
		log.Fatal(err)
	}
	claims, err := verifier.VerifyDevice(ctx, "<the device's bearer token>")
	if errors.Is(err, model.ErrUnauthenticated) {
		fmt.Println("401")
		return
	}
	fmt.Println(claims.ModelCode, claims.Key)
}
