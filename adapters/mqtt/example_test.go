package mqtt_test

import (
	"context"
	"log"
	"time"

	"github.com/espmdm/espmdm/adapters/mqtt"
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
