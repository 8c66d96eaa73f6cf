package integration_test

import (
	"bufio"
	"database/sql"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/uptrace/bun/driver/pgdriver"

	"github.com/espmdm/espmdm/integration"
)

// The device cache (adapters/devicecache) across two replicas on one
// database: each serves /iot/config from its own cache, and a change made
// through one is honoured by the other within a second, also while and
// after the other's listening connection is cut. The bound is the issue's
// requirement; the test polls up to it and asserts nothing finer.

// cacheMetric reads one sample of s's /metrics (0 when absent).
func cacheMetric(t *testing.T, s *server, sample string) float64 {
	t.Helper()
	body := s.request(http.MethodGet, "/metrics", "", nil).want(t, http.StatusOK, nil).body
	sc := bufio.NewScanner(strings.NewReader(string(body)))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), sample+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("metric %s: %v", sample, err)
			}
			return f
		}
	}
	return 0
}

const cacheHits = `espmdm_device_cache_lookups_total{result="hit"}`

// within polls GET /iot/config on s with tok until it answers want, for at
// most a second after the change that should cause it returned.
func within(t *testing.T, s *server, tok string, want int, what string) {
	t.Helper()
	deadline := time.Now().Add(time.Second)
	for {
		got := s.request(http.MethodGet, "/iot/config", tok, nil).status
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: the other replica still answers %d a second later, want %d", what, got, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestE2EDeviceCacheTwoReplicas(t *testing.T) {
	st := integration.Shared(t)
	env := rotationEnv("restore", 3)
	env["DATABASE_URL"] = st.NewDatabase(t)
	env["SECRET_KEY"] = randHex(32) // both open what the other sealed
	env["ROTATION_TIMEOUT_SECONDS"] = "60"
	env["DEVICE_RATE_LIMIT"] = "0"
	a := startServer(t, env)
	b := startServer(t, env)
	db := sql.OpenDB(pgdriver.NewConnector(pgdriver.WithDSN(env["DATABASE_URL"])))
	defer db.Close()

	m := newModel(t, a, nil)
	dev := newSimDevices(t, a, m.ID, legacy)[0]
	tok := dev.deviceToken(t, a)
	path := fmt.Sprintf("/api/devices/%d", dev.ID)
	setActive := func(active bool) {
		t.Helper()
		a.do(http.MethodPut, path, a.admin, map[string]any{"active": active}).want(t, http.StatusOK, nil)
	}
	// warm makes sure b serves the device from its cache.
	warm := func() {
		t.Helper()
		deadline := time.Now().Add(15 * time.Second)
		for {
			before := cacheMetric(t, b, cacheHits)
			b.request(http.MethodGet, "/iot/config", tok, nil).want(t, http.StatusOK, nil)
			b.request(http.MethodGet, "/iot/config", tok, nil).want(t, http.StatusOK, nil)
			if cacheMetric(t, b, cacheHits) > before {
				return
			}
			if time.Now().After(deadline) {
				t.Fatal("b never serves the device from its cache (is it listening?)")
			}
			time.Sleep(100 * time.Millisecond)
		}
	}

	t.Run("deactivation", func(t *testing.T) {
		warm()
		setActive(false)
		within(t, b, tok, http.StatusForbidden, "deactivated through a")
		setActive(true)
		within(t, b, tok, http.StatusOK, "reactivated through a")
		warm()
	})

	t.Run("rotation", func(t *testing.T) {
		// b holds the device as OK. The rotation starts (on whichever
		// replica holds the lease), the device fetches its new secret
		// through a, and proves it through b: b must read the PENDING row,
		// not its cached OK one, or the confirmation would not happen.
		warm()
		a.do(http.MethodPost, "/api/rotation/trigger", a.admin, nil).want(t, http.StatusAccepted, nil)
		deadline := time.Now().Add(30 * time.Second)
		for deviceState(t, a, dev.ID).RotationState != "PENDING" {
			if time.Now().After(deadline) {
				t.Fatal("the rotation did not start")
			}
			time.Sleep(100 * time.Millisecond)
		}
		var p provisioningDTO
		a.do(http.MethodGet, "/iot/provisioning", tok, nil).want(t, http.StatusOK, &p)
		a.keep(p.ClientSecret)
		b.keep(p.ClientSecret)
		if p.ClientSecret == dev.current {
			t.Fatal("the fetch handed out the old secret")
		}
		time.Sleep(1100 * time.Millisecond) // the new token is issued in a later second
		newTok, code := tokenStatus(t, st, dev.ClientID, p.ClientSecret)
		if code != http.StatusOK {
			t.Fatalf("the fetched secret is refused: %d", code)
		}
		a.keep(newTok)
		b.keep(newTok)
		b.request(http.MethodGet, "/iot/config", newTok, nil).want(t, http.StatusOK, nil)
		if got := deviceState(t, a, dev.ID); got.RotationState != "OK" || got.SecretCreatedAt == nil {
			t.Fatalf("after /iot/config through b with the new secret's token: state %s, want OK (confirmed by iat)", got.RotationState)
		}
		dev.current, tok = p.ClientSecret, newTok
		// Seen on a as well: a deactivation through b is refused by a.
		b.do(http.MethodPut, path, b.admin, map[string]any{"active": false}).want(t, http.StatusOK, nil)
		within(t, a, tok, http.StatusForbidden, "deactivated through b")
		setActive(true)
		within(t, b, tok, http.StatusOK, "reactivated through a")
	})

	t.Run("listening connection cut", func(t *testing.T) {
		warm()
		losses := cacheMetric(t, b, "espmdm_device_cache_listen_losses_total")
		var n int
		if err := db.QueryRowContext(t.Context(), `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
			WHERE datname = current_database() AND query LIKE 'LISTEN %'`).Scan(&n); err != nil || n != 2 {
			t.Fatalf("terminated %d listening sessions (%v), want a's and b's", n, err)
		}
		// Whether b has noticed, reconnected or not yet: never the stale
		// device.
		setActive(false)
		within(t, b, tok, http.StatusForbidden, "deactivated through a while b's listener was cut")
		deadline := time.Now().Add(15 * time.Second)
		for cacheMetric(t, b, "espmdm_device_cache_listen_losses_total") <= losses ||
			cacheMetric(t, b, "espmdm_device_cache_listening") != 1 {
			if time.Now().After(deadline) {
				t.Fatal("b did not notice the cut and listen again")
			}
			time.Sleep(100 * time.Millisecond)
		}
		setActive(true)
		within(t, b, tok, http.StatusOK, "reactivated through a after b listens again")
		warm() // and b serves from its cache again
		setActive(false)
		within(t, b, tok, http.StatusForbidden, "deactivated through a after b listens again")
	})
}
