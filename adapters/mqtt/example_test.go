package mqtt_test

import (
	"context"
	"crypto/rand"
	"errors"
	"log"
	"time"

	"github.com/espmdm/espmdm/adapters/mqtt"
	"github.com/espmdm/espmdm/core/model"
)

// A notifier lives as long as the application: Start it with the
// application's context, not a start-up timeout, and Stop it on shutdown.
func ExampleNew() {
	n, err := mqtt.New(mqtt.Config{
		BrokerURL: "mqtts://espmdm:secret@broker.example.com", // user info = credentials
		ClientID:  "espmdm-prod-1",                            // stable across restarts
		QueueDir:  "/var/lib/espmdm/mqtt",                     // queued notifications survive restarts
	})
	if err != nil {
		log.Fatal(err)
	}
	appCtx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := n.Start(appCtx); err != nil { // returns without waiting for the broker
		panic(err) // not log.Fatal: the deferred cancel must run
	}

	// Queued even while the broker is down; delivered when it is back.
	if err := n.FirmwareReleased(appCtx, "sensor_v2", "1.4.0"); err != nil {
		log.Print(err) // a validation error, or the queue could not store it
	}

	stopCtx, stop := context.WithTimeout(context.Background(), 10*time.Second)
	defer stop()
	if err := n.Stop(stopCtx); err != nil {
		log.Print(err)
	}
}

// DynSec manages the device accounts as espmdm's own broker account, which
// holds the dynamic security plugin's admin role. Like a notifier it lives
// as long as the application.
func ExampleNewDynSec() {
	accounts, err := mqtt.NewDynSec(mqtt.DynSecConfig{
		BrokerURL:   "mqtts://espmdm:secret@broker.example.com",
		CallTimeout: 10 * time.Second, // from connecting to the plugin's last answer
	})
	if err != nil {
		log.Fatal(err)
	}
	appCtx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := accounts.Start(appCtx); err != nil { // connects when a call needs it
		panic(err)
	}

	// The device's account: username = client id, a password of at least
	// 128 random bits, subscribe-only to its own and its model's topics.
	err = accounts.EnsureDeviceAccount(appCtx, model.BrokerAccount{
		ClientID: "iotdevice-sensor_v2-k3x9a1b2",
		Password: rand.Text(),
	})
	if errors.Is(err, model.ErrUnavailable) {
		log.Print(err) // the broker is down, or refused the change
	}

	stopCtx, stop := context.WithTimeout(context.Background(), 10*time.Second)
	defer stop()
	if err := accounts.Stop(stopCtx); err != nil {
		log.Print(err)
	}
}
