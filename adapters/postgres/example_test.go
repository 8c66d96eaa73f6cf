package postgres_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"

	"github.com/espmdm/espmdm/adapters/postgres"
	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/ports"
)

// Open the database, bring the schema up to date and use the repositories.
// (Not run as a test: it needs a database at DATABASE_URL.)
func Example() {
	ctx := context.Background()
	db, err := postgres.Open(ctx, os.Getenv("DATABASE_URL"))
	if err != nil {
		panic(err)
	}
	defer db.Close()
	if err := db.Migrate(ctx); err != nil {
		panic(err)
	}

	var models ports.ModelRepo = postgres.NewModelRepo(db)
	var devices ports.DeviceRepo = postgres.NewDeviceRepo(db)

	m := model.DeviceModel{Code: "thermo_v2", Name: "Thermostat v2"}
	if err := models.CreateModel(ctx, &m, nil); err != nil {
		panic(err)
	}
	d := model.Device{Key: "k3y0k3y0", DeviceModelID: m.ID, Config: json.RawMessage(`{"setpoint": 21}`), Active: true}
	if err := devices.CreateDevice(ctx, &d, nil); err != nil {
		panic(err)
	}
	page, err := devices.ListDevices(ctx, ports.DeviceFilter{ModelID: &m.ID, Limit: 50})
	if err != nil {
		panic(err)
	}
	for _, d := range page.Devices {
		fmt.Println(d.ClientID())
	}
}
