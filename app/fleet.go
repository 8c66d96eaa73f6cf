package app

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/espmdm/espmdm/ports"
)

// The fleet's metrics from the devices' state reports (SPEC §15), read at
// scrape time with one query each (like espmdm_rotation_devices), so every
// replica reports the database's truth and no request pays for them.

var (
	firmwareDesc = prometheus.NewDesc("espmdm_devices_firmware_version",
		"Active devices by model and the firmware version of their latest state report (devices that have not reported are not counted).",
		[]string{"model", "firmware_version"}, nil)
	staleDesc = prometheus.NewDesc("espmdm_devices_stale",
		"Active devices by model not seen for longer than DEVICE_STALE_SECONDS (never-seen ones counted from their creation).",
		[]string{"model"}, nil)
)

// fleetCollector reads the fleet counts at scrape time.
type fleetCollector struct {
	stats ports.FleetStats
	clock ports.Clock
	stale time.Duration
}

func registerFleetMetrics(m *Metrics, devices ports.DeviceRepo, clock ports.Clock, cfg Config) {
	m.Registry.MustRegister(&fleetCollector{stats: devices, clock: clock, stale: cfg.DeviceStale})
}

func (c *fleetCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- firmwareDesc
	ch <- staleDesc
}

func (c *fleetCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if counts, err := c.stats.FirmwareCounts(ctx); err != nil {
		ch <- prometheus.NewInvalidMetric(firmwareDesc, err)
	} else {
		for _, x := range counts {
			if x.Version == "" {
				continue // no report: an empty label value would read as no label
			}
			ch <- prometheus.MustNewConstMetric(firmwareDesc, prometheus.GaugeValue, float64(x.Devices), x.ModelCode, x.Version)
		}
	}
	if counts, err := c.stats.StaleCounts(ctx, c.clock.Now().Add(-c.stale)); err != nil {
		ch <- prometheus.NewInvalidMetric(staleDesc, err)
	} else {
		for code, n := range counts {
			ch <- prometheus.MustNewConstMetric(staleDesc, prometheus.GaugeValue, float64(n), code)
		}
	}
}
