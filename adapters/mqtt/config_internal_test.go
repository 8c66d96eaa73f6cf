package mqtt

import (
	"os"
	"testing"
	"time"
)

func TestSettings(t *testing.T) {
	host, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name               string
		cfg                Config
		server             string
		tls                bool
		serverName         string
		clientID           string
		username, password string
	}{
		{name: "mqtt default port and client id", cfg: Config{BrokerURL: "mqtt://broker"},
			server: "mqtt://broker:1883", clientID: "espmdm-" + host},
		{name: "tcp with port", cfg: Config{BrokerURL: "tcp://10.0.0.1:1884", ClientID: "x"},
			server: "mqtt://10.0.0.1:1884", clientID: "x"},
		{name: "mqtts default port", cfg: Config{BrokerURL: "MQTTS://broker.example/", ClientID: "x"},
			server: "mqtts://broker.example:8883", tls: true, serverName: "broker.example", clientID: "x"},
		{name: "ipv6", cfg: Config{BrokerURL: "ssl://[::1]", ClientID: "x"},
			server: "mqtts://[::1]:8883", tls: true, serverName: "::1", clientID: "x"},
		{name: "credentials from url", cfg: Config{BrokerURL: "mqtt://svc:p%40ss@broker:1883", ClientID: "x"},
			server: "mqtt://broker:1883", clientID: "x", username: "svc", password: "p@ss"},
		{name: "explicit credentials win", cfg: Config{BrokerURL: "mqtt://svc:old@broker", ClientID: "x", Username: "u", Password: "p"},
			server: "mqtt://broker:1883", clientID: "x", username: "u", password: "p"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := tc.cfg.settings()
			if err != nil {
				t.Fatalf("settings: %v", err)
			}
			if got := s.server.String(); got != tc.server {
				t.Errorf("server = %s, want %s (never with user info)", got, tc.server)
			}
			if s.useTLS != tc.tls {
				t.Errorf("useTLS = %v, want %v", s.useTLS, tc.tls)
			}
			if tc.tls && (s.tls == nil || s.tls.ServerName != tc.serverName) {
				t.Errorf("TLS config = %+v, want ServerName %q", s.tls, tc.serverName)
			}
			if s.clientID != tc.clientID || s.username != tc.username || s.password != tc.password {
				t.Errorf("client id, user, password = %q, %q, %q; want %q, %q, %q",
					s.clientID, s.username, s.password, tc.clientID, tc.username, tc.password)
			}
			if s.keepAlive != 30 || s.sessionExpiry != 24*3600 {
				t.Errorf("keep-alive %d s, session expiry %d s; want 30 and 86400", s.keepAlive, s.sessionExpiry)
			}
		})
	}
}

func TestBackoff(t *testing.T) {
	s, err := Config{BrokerURL: "mqtt://b", ClientID: "x", ReconnectDelay: time.Second, MaxReconnectDelay: 10 * time.Second}.settings()
	if err != nil {
		t.Fatal(err)
	}
	if d := s.backoff(0); d != 0 {
		t.Errorf("backoff(0) = %s, want 0 (first attempt at once)", d)
	}
	for _, tc := range []struct {
		attempt int
		base    time.Duration
	}{{1, time.Second}, {2, 2 * time.Second}, {3, 4 * time.Second}, {4, 8 * time.Second}, {5, 10 * time.Second}, {60, 10 * time.Second}} {
		for range 20 {
			d := s.backoff(tc.attempt)
			if lo, hi := tc.base*8/10, tc.base*12/10; d < lo || d > hi {
				t.Fatalf("backoff(%d) = %s, want %s..%s", tc.attempt, d, lo, hi)
			}
		}
	}
}
