package devicesim_test

import (
	"context"
	"fmt"
	"time"

	"github.com/espmdm/espmdm/integration/devicesim"
)

// A fleet on the broker espmdm notifies, with devices booted from the
// partitions espmdm handed out; after a rotation CheckAll tells whether any
// device was locked out.
func Example() {
	ctx := context.Background()
	fleet, err := devicesim.NewFleet(ctx, devicesim.Config{BrokerURL: "mqtt://127.0.0.1:1883", Concurrency: 32})
	if err != nil {
		panic(err)
	}
	defer fleet.Close(ctx)

	var partitions [][]byte // the answers of GET /api/devices/{id}/provisioning, through PartitionFromJSON
	for i, p := range partitions {
		d, err := fleet.Add(p)
		if err != nil {
			panic(err)
		}
		if i%10 == 0 {
			d.SetBehaviour(devicesim.Behaviour{Crash: devicesim.CrashAfterFetch})
		}
	}

	// ... POST /api/rotation/trigger, wait for the devices to be OK ...
	time.Sleep(time.Second)

	rep, err := fleet.CheckAll(ctx)
	if err != nil {
		panic(err)
	}
	s := fleet.Stats()
	fmt.Printf("%d devices, %d locked out, %.0f locked-out device-seconds, confirm p99 %s\n",
		rep.Devices, len(rep.LockedOut), rep.LockedOutSeconds, s.ConfirmLatency.P99)
}
