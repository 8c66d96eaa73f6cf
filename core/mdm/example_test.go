package mdm_test

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/espmdm/espmdm/core/mdm"
	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/ports"
	"github.com/espmdm/espmdm/ports/portstest"
)

// The core needs no framework: build it from any implementation of the
// ports, here the in-memory fakes, then create a model and a device.
func Example() {
	ctx := context.Background()
	clock := portstest.NewClock(time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC))
	store := portstest.NewStore(clock)
	idp := portstest.NewIdentityProvider(clock)
	svc := mdm.New(mdm.Deps{
		Models:    store,
		Devices:   store,
		Firmware:  store,
		Blobs:     portstest.NewBlobStore(),
		Clients:   idp,
		Directory: idp,
		Rotator:   idp,
		Policy:    idp,
		Notifier:  portstest.NewNotifier(),
		Clock:     clock,
	}, mdm.Config{BaseURL: "https://mdm.example"})

	m, err := svc.CreateModel(ctx, ports.NewModel{
		Code:         "thermostat",
		Name:         "Thermostat v2",
		ConfigSchema: json.RawMessage(`{"type":"object","properties":{"setpoint":{"type":"number","maximum":30}}}`),
	})
	if err != nil {
		fmt.Println(err)
		return
	}

	_, err = svc.CreateDevice(ctx, ports.NewDevice{DeviceModelID: m.ID, Config: json.RawMessage(`{"setpoint": 35}`)})
	fmt.Println(err)

	d, err := svc.CreateDevice(ctx, ports.NewDevice{DeviceModelID: m.ID, Config: json.RawMessage(`{"setpoint": 21.5}`)})
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(model.DeviceKeyPattern.MatchString(d.Key), d.ClientID() == "iotdevice-thermostat-"+d.Key, idp.Has(d.ClientID()))
	fmt.Println(d.Active, d.RotationState, string(d.Config))
	// Output:
	// config: does not match the model's config_schema: at '/setpoint': maximum: got 35, want 30
	// true true true
	// true OK {"setpoint":21.5}
}
