package app

import (
	"github.com/espmdm/espmdm/adapters/keycloak"
	"github.com/espmdm/espmdm/adapters/mqtt"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// The process metrics: the registry /metrics serves, and the adapters'
// operation counters (the rotation's own are in rotation.go).

// Metrics holds the process registry and the adapters' operation counters.
type Metrics struct {
	Registry *prometheus.Registry
	keycloak *prometheus.CounterVec
	mqtt     *prometheus.CounterVec
	db       *prometheus.CounterVec
}

func newMetrics() *Metrics {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m := &Metrics{
		Registry: reg,
		keycloak: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "espmdm_keycloak_operations_total", Help: "Keycloak Admin REST operations by operation and result.",
		}, []string{"op", "result"}),
		mqtt: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "espmdm_mqtt_operations_total", Help: "MQTT operations by operation and result.",
		}, []string{"op", "result"}),
		db: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "espmdm_core_errors_total", Help: "Errors the core handled without failing the request (cleanups, notifications), by operation.",
		}, []string{"op"}),
	}
	reg.MustRegister(m.keycloak, m.mqtt, m.db)
	// Every known operation is exported from the start, at 0, so that
	// dashboards and alerts (rate of errors) see it before it first runs.
	for _, op := range keycloak.Operations {
		m.keycloak.WithLabelValues(op, "ok")
		m.keycloak.WithLabelValues(op, "error")
	}
	for _, op := range []string{mqtt.OpConnect, mqtt.OpConnectionLost, mqtt.OpRotationNudge, mqtt.OpConfigChanged, mqtt.OpFirmwareReleased, mqtt.OpFirmwareAssigned,
		mqtt.OpEnsureAccount, mqtt.OpDisableAccount, mqtt.OpEnableAccount, mqtt.OpDeleteAccount, mqtt.OpListAccounts, mqtt.OpPingAccounts, mqtt.OpAnonymousAccess} {
		m.mqtt.WithLabelValues(op, "ok")
		m.mqtt.WithLabelValues(op, "error")
	}
	return m
}

func result(err error) string {
	if err != nil {
		return "error"
	}
	return "ok"
}
