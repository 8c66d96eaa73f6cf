package app

import (
	"context"
	"fmt"
	"net/url"

	"github.com/espmdm/espmdm/adapters/mqtt"
	"github.com/espmdm/espmdm/ports"
	"go.uber.org/fx"
	"go.uber.org/zap"
)

// brokerAccounts is the devices' broker accounts (SPEC §19) with
// MQTT_AUTH=dynsec, over the plugin's control topic as MQTT_URL's user;
// nil with MQTT_AUTH=none or without a broker: devices then get no
// account, and the broker's own configuration decides who connects.
func newBrokerAccounts(lc fx.Lifecycle, lt *Lifetime, cfg Config, m *Metrics, log *zap.Logger) (ports.BrokerAccounts, error) {
	if cfg.MQTTURL == "" {
		return nil, nil
	}
	if cfg.MQTTAuth == "none" {
		log.Warn("MQTT_AUTH=none: devices get no broker account; the broker must keep them out of each other's topics by its own configuration")
		return nil, nil
	}
	if u, err := url.Parse(cfg.MQTTURL); err == nil && u.User == nil {
		return nil, fmt.Errorf("MQTT_AUTH=dynsec: MQTT_URL names no user; espmdm manages the device accounts as a broker user holding the dynamic security plugin's admin role (mqtt://USER:PASSWORD@host:port), or set MQTT_AUTH=none")
	}
	d, err := mqtt.NewDynSec(mqtt.DynSecConfig{
		BrokerURL: cfg.MQTTURL,
		ClientID:  cfg.MQTTClientID + "-accounts",
		Logger:    log.Named("broker-accounts"),
		Observe:   func(op string, err error) { m.mqtt.WithLabelValues(op, result(err)).Inc() },
	})
	if err != nil {
		return nil, fmt.Errorf("mqtt accounts: %w", err)
	}
	lc.Append(fx.Hook{
		OnStart: func(ctx context.Context) error {
			if err := d.Start(lt.Ctx); err != nil {
				return err
			}
			// A broker without the plugin (or a user without its admin
			// role) is a configuration error: said at start, not at the
			// first device.
			if err := d.Ping(ctx); err != nil {
				return fmt.Errorf("MQTT_AUTH=dynsec: the broker's dynamic security plugin does not answer espmdm (is the plugin loaded, and does MQTT_URL's user hold its admin role? MQTT_AUTH=none for a broker secured otherwise): %w", err)
			}
			// What clients without an account may do, should the
			// listener let them in: subscribe to device topics during
			// the move to accounts (MQTT_AUTH_GRACE), else nothing.
			if err := d.SetAnonymousDeviceReads(ctx, cfg.MQTTAuthGrace); err != nil {
				return fmt.Errorf("MQTT_AUTH_GRACE: set what clients without an account may do: %w", err)
			}
			if cfg.MQTTAuthGrace {
				log.Warn("MQTT_AUTH_GRACE=true: clients without an account (devices provisioned before broker accounts) may subscribe to device topics, if the broker's listener lets them in (allow_anonymous true); turn both off once every device has fetched its password")
			}
			return nil
		},
		OnStop: d.Stop,
	})
	return d, nil
}
