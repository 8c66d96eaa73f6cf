package mqtt

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net"
	"net/url"
	"os"
	"strings"
	"time"

	"go.uber.org/zap"
)

// Defaults applied by New to zero Config fields.
const (
	DefaultKeepAlive         = 30 * time.Second
	DefaultSessionExpiry     = 24 * time.Hour
	DefaultConnectTimeout    = 10 * time.Second
	DefaultReconnectDelay    = time.Second
	DefaultMaxReconnectDelay = 30 * time.Second
	DefaultDrainTimeout      = 5 * time.Second
	// DefaultClientIDPrefix is prepended to the host name to make the
	// default client id.
	DefaultClientIDPrefix = "espmdm-"
)

// Dialer opens network connections; *net.Dialer and most proxy dialers
// implement it.
type Dialer interface {
	DialContext(ctx context.Context, network, address string) (net.Conn, error)
}

// Config configures a Notifier. Only BrokerURL is required.
type Config struct {
	// BrokerURL is mqtt://host[:port] or tcp://host[:port] (default port
	// 1883), or mqtts://, ssl:// or tls:// for MQTT over TLS (default port
	// 8883). User info in the URL (mqtt://user:pass@host) sets Username and
	// Password unless those are set explicitly; it is removed from the URL
	// before the URL can appear in a log or error.
	BrokerURL string
	// ClientID is the MQTT client id. It must be stable across restarts
	// (the broker keeps the QoS 1 session under it) and unique among the
	// broker's clients (a second connection with the same id takes the
	// session over). Default: "espmdm-" + the host name.
	ClientID string
	// Username and Password authenticate to the broker; optional.
	Username string
	Password string
	// TLS configures mqtts:// connections; nil means the system roots and
	// TLS 1.2 or later. ServerName defaults to the broker's host name.
	TLS *tls.Config
	// KeepAlive is the MQTT keep-alive period (default 30 s, at most
	// 65535 s).
	KeepAlive time.Duration
	// SessionExpiry is how long the broker keeps the session after the
	// connection drops (default 24 h, whole seconds). It must be non-zero
	// for QoS 1 messages in flight to survive a reconnect, so zero means the
	// default.
	SessionExpiry time.Duration
	// ConnectTimeout bounds one connection attempt (default 10 s).
	ConnectTimeout time.Duration
	// ReconnectDelay is the pause after the first failed connection attempt
	// (default 1 s); it doubles after each further failure up to
	// MaxReconnectDelay (default 30 s), with ±20% jitter.
	ReconnectDelay    time.Duration
	MaxReconnectDelay time.Duration
	// DrainTimeout is how long Stop waits, while connected, for queued
	// notifications to be sent before disconnecting (default 5 s; Stop's
	// context can cut it shorter).
	DrainTimeout time.Duration
	// QueueDir, when set, keeps the publish queue and the MQTT session state
	// in files under this directory (created if missing), so notifications
	// queued during an outage survive a restart. One directory per process:
	// two processes must not share it. Empty means an in-memory queue.
	QueueDir string
	// Dialer, when set, opens the network connection to the broker (TLS is
	// layered on top for mqtts://). Nil means autopaho's own dialer, which
	// honours $all_proxy.
	Dialer Dialer
	// Logger receives connection events and client errors; nil logs
	// nothing. Payloads are never logged (they hold no secrets anyway).
	Logger *zap.Logger
	// Observe, when set, is called after each operation: OpConnect (err is
	// nil on success), OpConnectionLost (err nil) and, for each
	// notification, OpRotationNudge, OpConfigChanged or OpFirmwareReleased
	// with the result of queueing it. It must be quick and must not block:
	// it runs on the connection manager's goroutines. Meant for metrics.
	Observe func(op string, err error)
}

// Operation names passed to Config.Observe.
const (
	OpConnect          = "connect"
	OpConnectionLost   = "connection_lost"
	OpRotationNudge    = "rotation_nudge"
	OpConfigChanged    = "config_changed"
	OpFirmwareReleased = "firmware_released"
	// OpFirmwareAssigned is a campaign's nudge to one device (SPEC §16).
	OpFirmwareAssigned = "firmware_assigned"
)

// settings is a validated Config with defaults applied.
type settings struct {
	server         *url.URL // without user info
	useTLS         bool
	tls            *tls.Config
	clientID       string
	username       string
	password       string
	keepAlive      uint16
	sessionExpiry  uint32
	connectTimeout time.Duration
	reconnectMin   time.Duration
	reconnectMax   time.Duration
	drainTimeout   time.Duration
	queueDir       string
	dialer         Dialer
	log            *zap.Logger
	observe        func(string, error)
}

func (c Config) settings() (settings, error) {
	s := settings{
		clientID: c.ClientID, username: c.Username, password: c.Password,
		connectTimeout: c.ConnectTimeout, reconnectMin: c.ReconnectDelay, reconnectMax: c.MaxReconnectDelay,
		drainTimeout: c.DrainTimeout, queueDir: c.QueueDir, dialer: c.Dialer, log: c.Logger, observe: c.Observe,
	}
	if err := s.parseURL(c.BrokerURL); err != nil {
		return settings{}, err
	}
	if s.username == "" {
		s.username = urlUser(c.BrokerURL)
	}
	if s.password == "" {
		s.password = urlPassword(c.BrokerURL)
	}
	if s.useTLS {
		if c.TLS != nil {
			s.tls = c.TLS.Clone()
		} else {
			s.tls = &tls.Config{MinVersion: tls.VersionTLS12}
		}
		if s.tls.ServerName == "" {
			s.tls.ServerName = s.server.Hostname()
		}
	}
	if s.clientID == "" {
		host, err := os.Hostname()
		if err != nil || host == "" {
			return settings{}, fmt.Errorf("mqtt: no ClientID set and no host name to derive one from: %w", err)
		}
		s.clientID = DefaultClientIDPrefix + host
	}

	keepAlive := orDefault(c.KeepAlive, DefaultKeepAlive)
	if keepAlive < time.Second || keepAlive > math.MaxUint16*time.Second {
		return settings{}, fmt.Errorf("mqtt: KeepAlive %s out of range (1s..65535s)", keepAlive)
	}
	s.keepAlive = uint16(keepAlive / time.Second)
	expiry := orDefault(c.SessionExpiry, DefaultSessionExpiry)
	if expiry < time.Second || expiry > math.MaxUint32*time.Second {
		return settings{}, fmt.Errorf("mqtt: SessionExpiry %s out of range (1s..%ds)", expiry, uint32(math.MaxUint32))
	}
	s.sessionExpiry = uint32(expiry / time.Second)

	s.connectTimeout = orDefault(s.connectTimeout, DefaultConnectTimeout)
	s.reconnectMin = orDefault(s.reconnectMin, DefaultReconnectDelay)
	s.reconnectMax = orDefault(s.reconnectMax, DefaultMaxReconnectDelay)
	s.drainTimeout = orDefault(s.drainTimeout, DefaultDrainTimeout)
	for name, d := range map[string]time.Duration{"ConnectTimeout": s.connectTimeout, "ReconnectDelay": s.reconnectMin,
		"MaxReconnectDelay": s.reconnectMax, "DrainTimeout": s.drainTimeout} {
		if d < 0 {
			return settings{}, fmt.Errorf("mqtt: %s must not be negative", name)
		}
	}
	if s.reconnectMax < s.reconnectMin {
		return settings{}, fmt.Errorf("mqtt: MaxReconnectDelay %s is below ReconnectDelay %s", s.reconnectMax, s.reconnectMin)
	}
	if s.log == nil {
		s.log = zap.NewNop()
	}
	if s.observe == nil {
		s.observe = func(string, error) {}
	}
	return s, nil
}

func orDefault(d, def time.Duration) time.Duration {
	if d == 0 {
		return def
	}
	return d
}

// parseURL sets server and useTLS. Errors never repeat the URL: it may carry
// a password.
func (s *settings) parseURL(raw string) error {
	if raw == "" {
		return errors.New("mqtt: BrokerURL is required")
	}
	u, err := url.Parse(raw)
	if err != nil {
		return errors.New("mqtt: BrokerURL is not a valid URL")
	}
	var port string
	switch strings.ToLower(u.Scheme) {
	case "mqtt", "tcp":
		port = "1883"
	case "mqtts", "ssl", "tls":
		port, s.useTLS = "8883", true
	default:
		return fmt.Errorf("mqtt: BrokerURL scheme %q not supported (want mqtt, tcp, mqtts, ssl or tls)", u.Scheme)
	}
	if u.Hostname() == "" {
		return errors.New("mqtt: BrokerURL has no host")
	}
	if (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" {
		return errors.New("mqtt: BrokerURL must not have a path, query or fragment")
	}
	if u.Port() != "" {
		port = u.Port()
	}
	scheme := "mqtt"
	if s.useTLS {
		scheme = "mqtts"
	}
	s.server = &url.URL{Scheme: scheme, Host: net.JoinHostPort(u.Hostname(), port)}
	return nil
}

func urlUser(raw string) string {
	if u, err := url.Parse(raw); err == nil && u.User != nil {
		return u.User.Username()
	}
	return ""
}

func urlPassword(raw string) string {
	if u, err := url.Parse(raw); err == nil && u.User != nil {
		p, _ := u.User.Password()
		return p
	}
	return ""
}

// backoff is the pause before connection attempt n: none before the first
// attempt, then min doubling up to max, with ±20% jitter.
func (s settings) backoff(attempt int) time.Duration {
	if attempt <= 0 {
		return 0
	}
	d := s.reconnectMin
	for i := 1; i < attempt && d < s.reconnectMax; i++ {
		d *= 2
	}
	d = min(d, s.reconnectMax)
	jitter := 0.8 + 0.4*rand.Float64()
	return time.Duration(float64(d) * jitter)
}
