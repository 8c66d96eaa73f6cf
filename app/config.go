package app

import (
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/espmdm/espmdm/adapters/coredump"
	"github.com/espmdm/espmdm/adapters/devicecache"
	"github.com/espmdm/espmdm/adapters/httpapi"
	"github.com/espmdm/espmdm/adapters/s3store"
	"github.com/espmdm/espmdm/adapters/schedule"
)

// Config is everything `espmdm serve` reads from the environment.
type Config struct {
	DatabaseURL    string
	HTTPAddr       string
	BaseURL        string
	MigrateOnStart bool

	OIDCIssuerURL  string
	OIDCTokenURL   string
	DeviceAudience string
	AdminRole      string
	ViewerRole     string
	PipelineRole   string
	AuthDisabled   bool

	KeycloakURL               string
	KeycloakRealm             string
	KeycloakAdminClientID     string
	KeycloakAdminClientSecret string
	KeycloakMaxConcurrency    int

	MQTTURL      string
	MQTTClientID string
	// MQTTAuth is "dynsec" (device accounts on the broker's dynamic
	// security plugin, SPEC §19) or "none" (a broker secured otherwise).
	MQTTAuth string
	// MQTTAuthGrace lets clients without an account subscribe to device topics
	// while a fleet moves to accounts (MQTT_AUTH=dynsec only).
	MQTTAuthGrace bool

	WiFiSSID     string
	WiFiPassword string

	// BlobStore is where firmware binaries (and ELFs, core dumps) are kept:
	// "fs", the directory FirmwareDir, or "s3", the bucket of S3 (SPEC §20).
	BlobStore        string
	FirmwareDir      string
	S3               s3store.Config
	FirmwareMaxBytes int64
	// JSONMaxBytes and IoTMaxBytes cap admin JSON bodies and /iot/* (and
	// bodiless admin route) bodies.
	JSONMaxBytes int64
	IoTMaxBytes  int64
	// DeviceRateLimit is each device's requests a minute on /iot/*
	// (burst DeviceRateBurst); UnauthRateLimit each client address's
	// refused (401) requests a minute (burst UnauthRateBurst). 0 turns a
	// limit off.
	DeviceRateLimit int
	DeviceRateBurst int
	UnauthRateLimit int
	UnauthRateBurst int
	// TrustedProxies are the reverse proxies whose X-Forwarded-For is
	// believed.
	TrustedProxies []netip.Prefix
	// SecretKey seals secrets kept at rest (64 hex chars or base64 of 32
	// bytes).
	SecretKey string
	// SecretKeyPrevious, when set, still opens secrets sealed before a
	// SECRET_KEY change.
	SecretKeyPrevious string

	RotationCron         string
	RotationTZ           string
	RotationTimeout      time.Duration
	RotationFetchTimeout time.Duration
	RotationConcurrency  int
	RotationTick         time.Duration
	RotationRetry        time.Duration
	RotationMode         string
	RotationGrace        time.Duration
	RotationWarningAge   time.Duration
	RotationCriticalAge  time.Duration

	// DeviceCache is how many devices the device API's lookup cache of
	// this replica holds (adapters/devicecache); 0 turns it off.
	DeviceCache int

	// DeviceStale is how long a device may stay silent before the metrics
	// count it stale (SPEC §15).
	DeviceStale time.Duration
	// CampaignTick is how often the campaign worker advances the running
	// campaigns (SPEC §16).
	CampaignTick time.Duration

	// Core dumps (SPEC §17): the largest dump and ELF accepted, how many
	// dumps a device keeps, the analysis workers of this replica, the time
	// one analysis may take, how often the workers look for dumps another
	// replica took, and the tools.
	CoredumpMaxBytes int64
	ELFMaxBytes      int64
	CoredumpKeep     int
	CoredumpWorkers  int
	CoredumpTimeout  time.Duration
	CoredumpPoll     time.Duration
	CoredumpTool     string
	CoredumpGDB      string

	ReconcileInterval time.Duration
	ShutdownTimeout   time.Duration
	// InstanceName names this process in the rotation lease and status.
	InstanceName string

	LogLevel  string
	LogFormat string
}

// Var describes one environment variable of Config.
type Var struct {
	Name     string
	Default  string
	Required bool
	Secret   bool
	Help     string
	set      func(c *Config, v string) error
}

func str(p func(*Config) *string) func(*Config, string) error {
	return func(c *Config, v string) error { *p(c) = v; return nil }
}

func boolean(p func(*Config) *bool) func(*Config, string) error {
	return func(c *Config, v string) error {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return errors.New("want true or false")
		}
		*p(c) = b
		return nil
	}
}

func duration(p func(*Config) *time.Duration) func(*Config, string) error {
	return func(c *Config, v string) error {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			return errors.New("want a positive duration such as 10m or 30s")
		}
		*p(c) = d
		return nil
	}
}

func bytesize(p func(*Config) *int64) func(*Config, string) error {
	return func(c *Config, v string) error {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n <= 0 {
			return errors.New("want a positive number of bytes")
		}
		*p(c) = n
		return nil
	}
}

// perMinute reads a rate limit: a whole number of requests a minute, 0
// for none.
func perMinute(p func(*Config) *int) func(*Config, string) error {
	return func(c *Config, v string) error {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 || n > 1_000_000 {
			return errors.New("want a whole number of requests a minute (0 turns the limit off)")
		}
		*p(c) = n
		return nil
	}
}

func positive(p func(*Config) *int) func(*Config, string) error {
	return func(c *Config, v string) error {
		n, err := strconv.Atoi(v)
		if err != nil || n <= 0 {
			return errors.New("want a positive whole number")
		}
		*p(c) = n
		return nil
	}
}

// seconds and days read a positive whole number of that unit.
func seconds(p func(*Config) *time.Duration) func(*Config, string) error {
	return unit(p, time.Second, "seconds")
}

func days(p func(*Config) *time.Duration) func(*Config, string) error {
	return unit(p, 24*time.Hour, "days")
}

func unit(p func(*Config) *time.Duration, u time.Duration, name string) func(*Config, string) error {
	return func(c *Config, v string) error {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n <= 0 || n > int64(100*365*24*time.Hour/u) {
			return fmt.Errorf("want a positive whole number of %s", name)
		}
		*p(c) = time.Duration(n) * u
		return nil
	}
}

// ParseGrace reads ROTATION_GRACE: a Go duration ("168h", "90m") or whole
// days ("7d"), positive and whole seconds (Keycloak counts in seconds).
func ParseGrace(v string) (time.Duration, error) {
	var d time.Duration
	if n, ok := strings.CutSuffix(v, "d"); ok {
		days, err := strconv.ParseInt(n, 10, 64)
		if err != nil || days <= 0 || days > 3650 {
			return 0, errors.New("want a duration such as 7d or 168h")
		}
		d = time.Duration(days) * 24 * time.Hour
	} else {
		var err error
		if d, err = time.ParseDuration(v); err != nil || d <= 0 {
			return 0, errors.New("want a duration such as 7d or 168h")
		}
	}
	if d%time.Second != 0 {
		return 0, errors.New("want whole seconds")
	}
	return d, nil
}

func httpURL(p func(*Config) *string) func(*Config, string) error {
	return func(c *Config, v string) error {
		u, err := url.Parse(v)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return errors.New("want an http(s) URL")
		}
		*p(c) = strings.TrimRight(v, "/")
		return nil
	}
}

// Vars lists every variable `espmdm serve` reads, in the order --help shows
// them. It is the single source of defaults.
var Vars = []Var{
	{Name: "DATABASE_URL", Required: true, Secret: true, Help: "PostgreSQL URL, e.g. postgres://user:pass@host:5432/espmdm?sslmode=disable",
		set: str(func(c *Config) *string { return &c.DatabaseURL })},
	{Name: "HTTP_ADDR", Default: ":8080", Help: "address the HTTP server listens on",
		set: str(func(c *Config) *string { return &c.HTTPAddr })},
	{Name: "BASE_URL", Required: true, Help: "public URL of this server, given to devices (provisioning base_url)",
		set: httpURL(func(c *Config) *string { return &c.BaseURL })},
	{Name: "MIGRATE_ON_START", Default: "true", Help: "apply database migrations when serve starts",
		set: boolean(func(c *Config) *bool { return &c.MigrateOnStart })},
	{Name: "KEYCLOAK_URL", Required: true, Help: "Keycloak base URL, e.g. https://sso.example.com",
		set: httpURL(func(c *Config) *string { return &c.KeycloakURL })},
	{Name: "KEYCLOAK_REALM", Default: "iot", Help: "realm holding the device clients",
		set: str(func(c *Config) *string { return &c.KeycloakRealm })},
	{Name: "KEYCLOAK_ADMIN_CLIENT_ID", Default: "iotsupport-admin", Help: "service-account client with realm-management manage-clients, view-clients, query-clients",
		set: str(func(c *Config) *string { return &c.KeycloakAdminClientID })},
	{Name: "KEYCLOAK_ADMIN_CLIENT_SECRET", Required: true, Secret: true, Help: "secret of KEYCLOAK_ADMIN_CLIENT_ID",
		set: str(func(c *Config) *string { return &c.KeycloakAdminClientSecret })},
	{Name: "KEYCLOAK_MAX_CONCURRENCY", Default: "8", Help: "Admin REST API requests in flight at once (rotation, provisioning and reconciliation share them)",
		set: positive(func(c *Config) *int { return &c.KeycloakMaxConcurrency })},
	{Name: "OIDC_ISSUER_URL", Default: "$KEYCLOAK_URL/realms/$KEYCLOAK_REALM", Help: "exact issuer (iss) of admin and device tokens",
		set: httpURL(func(c *Config) *string { return &c.OIDCIssuerURL })},
	{Name: "OIDC_TOKEN_URL", Default: "$OIDC_ISSUER_URL/protocol/openid-connect/token", Help: "token endpoint given to devices (provisioning token_url)",
		set: httpURL(func(c *Config) *string { return &c.OIDCTokenURL })},
	{Name: "DEVICE_AUDIENCE", Default: "espmdm-iot", Help: "audience device tokens must carry (added to each device client)",
		set: str(func(c *Config) *string { return &c.DeviceAudience })},
	{Name: "ADMIN_ROLE", Default: "mdm-admin", Help: "realm role required for admin API writes",
		set: str(func(c *Config) *string { return &c.AdminRole })},
	{Name: "VIEWER_ROLE", Default: "mdm-viewer", Help: "realm role allowed to read the admin API",
		set: str(func(c *Config) *string { return &c.ViewerRole })},
	{Name: "PIPELINE_ROLE", Default: "mdm-pipeline", Help: "realm role of CI pipelines: firmware upload by model code only (/api/pipeline/...)",
		set: str(func(c *Config) *string { return &c.PipelineRole })},
	{Name: "AUTH_DISABLED", Default: "false", Help: "turn admin API authentication off (trusted networks only; logs a warning)",
		set: boolean(func(c *Config) *bool { return &c.AuthDisabled })},
	{Name: "MQTT_URL", Secret: true, Help: "MQTT v5 broker, e.g. mqtt://user:pass@broker:1883 (empty: no device notifications); devices get it without user and password",
		set: str(func(c *Config) *string { return &c.MQTTURL })},
	{Name: "MQTT_AUTH", Default: "dynsec", Help: "dynsec (every device gets a broker account over Mosquitto's dynamic security plugin; MQTT_URL's user must hold its admin role) or none (a broker you secure otherwise)",
		set: func(c *Config, v string) error {
			switch v {
			case "dynsec", "none":
				c.MQTTAuth = v
				return nil
			}
			return errors.New("want dynsec or none")
		}},
	{Name: "MQTT_AUTH_GRACE", Default: "false", Help: "while moving a fleet to broker accounts: let devices without one subscribe to device topics (MQTT_AUTH=dynsec; the broker must allow anonymous clients)",
		set: boolean(func(c *Config) *bool { return &c.MQTTAuthGrace })},
	{Name: "MQTT_CLIENT_ID", Default: "espmdm-$HOSTNAME", Help: "stable MQTT client id (QoS 1 sessions need it stable)",
		set: str(func(c *Config) *string { return &c.MQTTClientID })},
	{Name: "WIFI_SSID", Help: "Wi-Fi network written into provisioning partitions (optional)",
		set: str(func(c *Config) *string { return &c.WiFiSSID })},
	{Name: "WIFI_PASSWORD", Secret: true, Help: "Wi-Fi password written into provisioning partitions (optional)",
		set: str(func(c *Config) *string { return &c.WiFiPassword })},
	{Name: "BLOB_STORE", Default: "fs", Help: "where firmware binaries are kept: fs (the directory FIRMWARE_DIR; replicas must share it) or s3 (the bucket S3_BUCKET, for replicas on several hosts)",
		set: func(c *Config, v string) error {
			switch v {
			case "fs", "s3":
				c.BlobStore = v
				return nil
			}
			return errors.New("want fs or s3")
		}},
	{Name: "FIRMWARE_DIR", Default: "./data/firmware", Help: "BLOB_STORE=fs: directory keeping uploaded firmware binaries (and the source of espmdm blobs migrate)",
		set: str(func(c *Config) *string { return &c.FirmwareDir })},
	{Name: "S3_ENDPOINT", Default: s3store.DefaultEndpoint, Help: "BLOB_STORE=s3: the S3-compatible store's URL, http:// or https://, host and port only",
		set: str(func(c *Config) *string { return &c.S3.Endpoint })},
	{Name: "S3_REGION", Default: s3store.DefaultRegion, Help: "BLOB_STORE=s3: the bucket's region (requests are signed for it)",
		set: str(func(c *Config) *string { return &c.S3.Region })},
	{Name: "S3_BUCKET", Help: "BLOB_STORE=s3 (required): the bucket, which must exist (espmdm does not create it)",
		set: str(func(c *Config) *string { return &c.S3.Bucket })},
	{Name: "S3_PREFIX", Help: "BLOB_STORE=s3: prepended to every object name (a / is added), so one bucket can serve several deployments",
		set: str(func(c *Config) *string { return &c.S3.Prefix })},
	{Name: "S3_ACCESS_KEY_ID", Help: "BLOB_STORE=s3 (required): the access key espmdm signs its requests with",
		set: str(func(c *Config) *string { return &c.S3.AccessKeyID })},
	{Name: "S3_SECRET_ACCESS_KEY", Secret: true, Help: "BLOB_STORE=s3 (required): the secret of S3_ACCESS_KEY_ID",
		set: str(func(c *Config) *string { return &c.S3.SecretAccessKey })},
	{Name: "S3_FORCE_PATH_STYLE", Default: "false", Help: "BLOB_STORE=s3: true addresses the bucket in the path (endpoint/bucket/key), as MinIO, Ceph and S3Proxy usually need; false lets the client choose (virtual-host style on AWS)",
		set: boolean(func(c *Config) *bool { return &c.S3.ForcePathStyle })},
	{Name: "FIRMWARE_MAX_BYTES", Default: "16777216", Help: "largest accepted firmware upload (larger gets 413)",
		set: bytesize(func(c *Config) *int64 { return &c.FirmwareMaxBytes })},
	{Name: "JSON_MAX_BYTES", Default: "1048576", Help: "largest JSON body of the admin API (larger gets 413)",
		set: bytesize(func(c *Config) *int64 { return &c.JSONMaxBytes })},
	{Name: "IOT_MAX_BYTES", Default: "4096", Help: "largest body on /iot/* and on admin routes that take none (larger gets 413)",
		set: bytesize(func(c *Config) *int64 { return &c.IoTMaxBytes })},
	{Name: "DEVICE_RATE_LIMIT", Default: "300", Help: "requests a minute each device may make on /iot/* (429 with Retry-After beyond; 0: no limit)",
		set: perMinute(func(c *Config) *int { return &c.DeviceRateLimit })},
	{Name: "DEVICE_RATE_BURST", Default: "60", Help: "requests a device may make at once within DEVICE_RATE_LIMIT",
		set: positive(func(c *Config) *int { return &c.DeviceRateBurst })},
	{Name: "UNAUTH_RATE_LIMIT", Default: "120", Help: "refused (401) requests a minute per client address; past it the address gets 429 before its token is checked (0: no limit)",
		set: perMinute(func(c *Config) *int { return &c.UnauthRateLimit })},
	{Name: "UNAUTH_RATE_BURST", Default: "100", Help: "refused requests an address may make at once within UNAUTH_RATE_LIMIT",
		set: positive(func(c *Config) *int { return &c.UnauthRateBurst })},
	{Name: "TRUSTED_PROXIES", Help: "reverse proxies (IPs or CIDRs, comma-separated) whose X-Forwarded-For gives the client address for UNAUTH_RATE_LIMIT and the logs",
		set: func(c *Config, v string) error {
			p, err := httpapi.ParseTrustedProxies(v)
			c.TrustedProxies = p
			return err
		}},
	{Name: "SECRET_KEY", Required: true, Secret: true, Help: "32-byte key (64 hex chars or base64) sealing secrets kept in the database",
		set: str(func(c *Config) *string { return &c.SecretKey })},
	{Name: "SECRET_KEY_PREVIOUS", Secret: true, Help: "the SECRET_KEY before a key change: still opens secrets sealed under it (optional)",
		set: str(func(c *Config) *string { return &c.SecretKeyPrevious })},
	{Name: "ROTATION_CRON", Default: "0 8 * * 6#1", Help: "when every device secret is rotated: 5-field Unix cron (default: first Saturday of the month, 08:00)",
		set: str(func(c *Config) *string { return &c.RotationCron })},
	{Name: "ROTATION_TZ", Default: "UTC", Help: "IANA time zone of ROTATION_CRON",
		set: func(c *Config, v string) error {
			if _, err := time.LoadLocation(v); err != nil {
				return errors.New("want an IANA time zone name such as UTC or Europe/Berlin")
			}
			c.RotationTZ = v
			return nil
		}},
	{Name: "ROTATION_MODE", Default: "auto", Help: "auto, grace (old secret valid until the device acks; needs Keycloak's secret rotation policy) or restore",
		set: func(c *Config, v string) error {
			switch v {
			case "auto", "grace", "restore":
				c.RotationMode = v
				return nil
			}
			return errors.New("want auto, grace or restore")
		}},
	{Name: "ROTATION_CONCURRENCY", Default: "10", Help: "devices rotating at once (slots)",
		set: positive(func(c *Config) *int { return &c.RotationConcurrency })},
	{Name: "ROTATION_TIMEOUT_SECONDS", Default: "300", Help: "an unconfirmed rotation attempt times out after this",
		set: seconds(func(c *Config) *time.Duration { return &c.RotationTimeout })},
	{Name: "ROTATION_FETCH_TIMEOUT_SECONDS", Default: "60", Help: "an attempt whose device has not fetched its credentials this long after the nudge (offline) times out, freeing its slot; at or above ROTATION_TIMEOUT_SECONDS it changes nothing",
		set: seconds(func(c *Config) *time.Duration { return &c.RotationFetchTimeout })},
	{Name: "ROTATION_TICK_SECONDS", Default: "30", Help: "how often timeouts, the schedule and free slots are checked",
		set: seconds(func(c *Config) *time.Duration { return &c.RotationTick })},
	{Name: "ROTATION_RETRY_SECONDS", Default: "3600", Help: "least time between a timed-out device's attempts",
		set: seconds(func(c *Config) *time.Duration { return &c.RotationRetry })},
	{Name: "ROTATION_GRACE", Default: "7d", Help: "grace mode: how long the old secret stays valid (must equal the Keycloak profile's rotated-expiration-period)",
		set: func(c *Config, v string) error {
			d, err := ParseGrace(v)
			c.RotationGrace = d
			return err
		}},
	{Name: "ROTATION_WARNING_DAYS", Default: "45", Help: "dashboard: secrets older than this are a warning",
		set: days(func(c *Config) *time.Duration { return &c.RotationWarningAge })},
	{Name: "ROTATION_CRITICAL_DAYS", Default: "90", Help: "dashboard: secrets older than this are critical",
		set: days(func(c *Config) *time.Duration { return &c.RotationCriticalAge })},
	{Name: "DEVICE_CACHE", Default: "on", Help: "the device API's per-replica device cache, kept coherent by PostgreSQL LISTEN/NOTIFY: on (10000 devices), off, or how many devices it holds",
		set: func(c *Config, v string) error {
			switch v {
			case "on":
				c.DeviceCache = devicecache.DefaultMaxEntries
				return nil
			case "off":
				c.DeviceCache = 0
				return nil
			}
			n, err := strconv.Atoi(v)
			if err != nil || n < 0 || n > 10_000_000 {
				return errors.New("want on, off or a number of devices (0 is off)")
			}
			c.DeviceCache = n
			return nil
		}},
	{Name: "DEVICE_STALE_SECONDS", Default: "86400", Help: "metrics: an active device not seen for longer than this counts as stale (espmdm_devices_stale)",
		set: seconds(func(c *Config) *time.Duration { return &c.DeviceStale })},
	{Name: "CAMPAIGN_TICK_SECONDS", Default: "2", Help: "how often the campaign worker (one replica, under its lease) starts waves, sends owed nudges, times members out and completes campaigns; it also runs at once when a campaign is created or resumed or a wave's last member resolved on the replica holding the lease, and aborts on the failure ratio happen as reports arrive",
		set: seconds(func(c *Config) *time.Duration { return &c.CampaignTick })},
	{Name: "COREDUMP_MAX_BYTES", Default: "1048576", Help: "largest core dump a device may upload (larger gets 413)",
		set: bytesize(func(c *Config) *int64 { return &c.CoredumpMaxBytes })},
	{Name: "ELF_MAX_BYTES", Default: "536870912", Help: "largest application ELF accepted for core dump analysis (larger gets 413)",
		set: bytesize(func(c *Config) *int64 { return &c.ELFMaxBytes })},
	{Name: "COREDUMP_KEEP", Default: "20", Help: "how many core dumps each device keeps (the oldest beyond it are deleted)",
		set: positive(func(c *Config) *int { return &c.CoredumpKeep })},
	{Name: "COREDUMP_WORKERS", Default: "1", Help: "core dump analyses this replica runs at once (0: none, for a replica without the analysis tools)",
		set: func(c *Config, v string) error {
			n, err := strconv.Atoi(v)
			if err != nil || n < 0 || n > 64 {
				return errors.New("want a whole number from 0 to 64")
			}
			c.CoredumpWorkers = n
			return nil
		}},
	{Name: "COREDUMP_TIMEOUT", Default: "2m", Help: "how long one core dump analysis may run before it is failed",
		set: duration(func(c *Config) *time.Duration { return &c.CoredumpTimeout })},
	{Name: "COREDUMP_POLL_SECONDS", Default: "10", Help: "how often the analysis workers look for dumps uploaded through other replicas, and how long a dump whose analysis could not run (tools missing) waits before it is tried again",
		set: seconds(func(c *Config) *time.Duration { return &c.CoredumpPoll })},
	{Name: "COREDUMP_TOOL", Default: "$ESPMDM_CACHE_DIR/coredump-" + coredump.ToolVersion + "/bin/esp-coredump", Help: "Espressif's esp-coredump (make deps installs it in a virtualenv in the cache directory: ESPMDM_CACHE_DIR, else ~/.cache/espmdm)",
		set: str(func(c *Config) *string { return &c.CoredumpTool })},
	{Name: "COREDUMP_GDB", Default: coredump.DefaultGDB, Help: "the GDB esp-coredump runs (Debian's gdb-multiarch serves the RISC-V chips)",
		set: str(func(c *Config) *string { return &c.CoredumpGDB })},
	{Name: "INSTANCE_NAME", Default: "espmdm@$HOSTNAME:$PID", Help: "names this process as the rotation lease holder (GET /api/rotation/status)",
		set: str(func(c *Config) *string { return &c.InstanceName })},
	{Name: "RECONCILE_INTERVAL", Default: "10m", Help: "how often Keycloak clients are reconciled with devices",
		set: duration(func(c *Config) *time.Duration { return &c.ReconcileInterval })},
	{Name: "SHUTDOWN_TIMEOUT", Default: "20s", Help: "how long shutdown waits for in-flight requests",
		set: duration(func(c *Config) *time.Duration { return &c.ShutdownTimeout })},
	{Name: "LOG_LEVEL", Default: "info", Help: "debug, info, warn or error",
		set: func(c *Config, v string) error {
			switch v {
			case "debug", "info", "warn", "error":
				c.LogLevel = v
				return nil
			}
			return errors.New("want debug, info, warn or error")
		}},
	{Name: "LOG_FORMAT", Default: "json", Help: "json or console",
		set: func(c *Config, v string) error {
			if v != "json" && v != "console" {
				return errors.New("want json or console")
			}
			c.LogFormat = v
			return nil
		}},
}

// LoadConfig reads Config through getenv (os.Getenv in production). The
// error names the first missing or invalid variable in one line, never its
// value.
func LoadConfig(getenv func(string) string) (Config, error) {
	var c Config
	if err := setVars(&c, getenv, func(Var) bool { return true }); err != nil {
		return Config{}, err
	}
	if c.OIDCIssuerURL == "" {
		c.OIDCIssuerURL = c.KeycloakURL + "/realms/" + c.KeycloakRealm
	}
	if c.OIDCTokenURL == "" {
		c.OIDCTokenURL = c.OIDCIssuerURL + "/protocol/openid-connect/token"
	}
	if c.CoredumpTool == "" {
		c.CoredumpTool = coredump.DefaultTool()
	}
	if c.InstanceName == "" {
		host, _ := os.Hostname()
		c.InstanceName = "espmdm@" + host + ":" + strconv.Itoa(os.Getpid())
	}
	if c.MQTTClientID == "" {
		host, _ := os.Hostname()
		c.MQTTClientID = "espmdm-" + host
	}
	if _, err := schedule.Parse(c.RotationCron, c.RotationTZ); err != nil {
		// The reason quotes the part that is wrong; never the whole value.
		return Config{}, errors.New("invalid ROTATION_CRON: " + strings.ReplaceAll(err.Error(), c.RotationCron, "(the value)"))
	}
	if c.RotationCriticalAge <= c.RotationWarningAge {
		return Config{}, errors.New("invalid ROTATION_CRITICAL_DAYS: must be more than ROTATION_WARNING_DAYS")
	}
	if c.BlobStore == "s3" {
		// The variables' own messages: which one is missing or wrong,
		// never a value.
		if err := c.S3.Validate(); err != nil {
			return Config{}, fmt.Errorf("BLOB_STORE=s3: %w", err)
		}
	}
	if c.MQTTURL != "" {
		u, err := url.Parse(c.MQTTURL)
		if err != nil || u.Host == "" {
			return Config{}, errors.New("invalid MQTT_URL: want mqtt://host:port, mqtts://host:port or tcp://host:port")
		}
	}
	return c, nil
}

// setVars sets the variables that match in c from getenv, with their
// defaults; derived defaults ($...) are left to the caller.
func setVars(c *Config, getenv func(string) string, match func(Var) bool) error {
	for _, v := range Vars {
		if !match(v) {
			continue
		}
		val := strings.TrimSpace(getenv(v.Name))
		if val == "" {
			if v.Required {
				return fmt.Errorf("missing required environment variable %s (%s)", v.Name, v.Help)
			}
			if v.Default == "" || strings.Contains(v.Default, "$") {
				continue // derived by the caller
			}
			val = v.Default
		}
		if err := v.set(c, val); err != nil {
			return fmt.Errorf("invalid %s: %w", v.Name, err)
		}
	}
	return nil
}

// LoadBlobConfig reads only the blob store's variables (BLOB_STORE,
// FIRMWARE_DIR, S3_*), for the commands that need nothing else
// (`espmdm blobs migrate`), and checks the S3 ones whatever BLOB_STORE
// says: such a command names the store it works on itself.
func LoadBlobConfig(getenv func(string) string) (Config, error) {
	var c Config
	err := setVars(&c, getenv, func(v Var) bool {
		return v.Name == "BLOB_STORE" || v.Name == "FIRMWARE_DIR" || strings.HasPrefix(v.Name, "S3_")
	})
	if err != nil {
		return Config{}, err
	}
	if err := c.S3.Validate(); err != nil {
		return Config{}, err
	}
	return c, nil
}

// HelpText lists the variables for `espmdm serve --help`.
func HelpText() string {
	var b strings.Builder
	tw := tabwriter.NewWriter(&b, 2, 8, 2, ' ', 0)
	for _, v := range Vars {
		def := v.Default
		if v.Required {
			def = "(required)"
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\n", v.Name, def, v.Help)
	}
	tw.Flush()
	return b.String()
}
