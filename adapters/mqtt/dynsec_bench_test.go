package mqtt_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/espmdm/espmdm/adapters/mqtt"
	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/integration"
	"github.com/espmdm/espmdm/ports/portstest"
)

// BenchmarkDynSecEnsure1000 makes 1,000 device accounts on a fresh broker
// in each iteration, with 1 or 64 calls at a time (concurrent calls share
// messages up to MaxBatch commands; batch=1 sends each call alone), and
// reports accounts per second. The plugin rewrites its whole state file
// after every change, so the rate falls as the broker fills.
func BenchmarkDynSecEnsure1000(b *testing.B) {
	const accounts = 1000
	for _, c := range []struct{ workers, batch int }{{1, 0}, {64, 1}, {64, 0}} {
		b.Run(fmt.Sprintf("workers=%d/batch=%d", c.workers, c.batch), func(b *testing.B) {
			var made time.Duration
			for range b.N {
				b.StopTimer()
				broker := integration.NewBroker(b, false)
				d := startDynSec(b, mqtt.DynSecConfig{BrokerURL: broker.AdminURL(), MaxBatch: c.batch, CallTimeout: time.Minute,
					Logger: zap.NewNop()})
				ids := make(chan model.BrokerAccount, accounts)
				code := "bench_" + randHex(3)
				for i := range accounts {
					ids <- model.BrokerAccount{ClientID: model.ClientID(code, fmt.Sprintf("%08d", i)), Password: portstest.NewBrokerPassword()}
				}
				close(ids)
				ctx := context.Background()
				b.StartTimer()
				began := time.Now()
				var wg sync.WaitGroup
				for range c.workers {
					wg.Go(func() {
						for a := range ids {
							if err := d.EnsureDeviceAccount(ctx, a); err != nil {
								b.Error(err)
								return
							}
						}
					})
				}
				wg.Wait()
				made += time.Since(began)
				b.StopTimer()
				list, err := d.ListDeviceAccounts(ctx)
				if err != nil || len(list) != accounts {
					b.Fatalf("listed %d accounts (%v), want %d", len(list), err, accounts)
				}
				b.StartTimer()
			}
			b.ReportMetric(float64(accounts*b.N)/made.Seconds(), "accounts/s")
		})
	}
}
