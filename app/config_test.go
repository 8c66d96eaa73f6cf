package app_test

import (
	"fmt"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/espmdm/espmdm/adapters/coredump"
	"github.com/espmdm/espmdm/adapters/s3store"
	"github.com/espmdm/espmdm/app"
)

// secretValue is a distinctive value: an error that echoes what it was
// given would show it.
const secretValue = "s3cr3t-value-xyz"

// requiredEnv is the smallest environment LoadConfig accepts.
func requiredEnv() map[string]string {
	return map[string]string{
		"DATABASE_URL":                 "postgres://espmdm:pw@db.example.com:5432/espmdm?sslmode=disable",
		"BASE_URL":                     "https://mdm.example.com",
		"KEYCLOAK_URL":                 "https://sso.example.com",
		"KEYCLOAK_ADMIN_CLIENT_SECRET": "admin-secret",
		"SECRET_KEY":                   strings.Repeat("ab", 32),
	}
}

// with returns a copy of env with the given KEY, value pairs set.
func with(env map[string]string, kv ...string) map[string]string {
	out := make(map[string]string, len(env)+len(kv)/2)
	for k, v := range env {
		out[k] = v
	}
	for i := 0; i+1 < len(kv); i += 2 {
		out[kv[i]] = kv[i+1]
	}
	return out
}

func load(t *testing.T, env map[string]string) (app.Config, error) {
	t.Helper()
	return app.LoadConfig(func(k string) string { return env[k] })
}

func mustLoad(t *testing.T, env map[string]string) app.Config {
	t.Helper()
	cfg, err := load(t, env)
	if err != nil {
		t.Fatalf("LoadConfig: %v", err)
	}
	return cfg
}

func hostname(t *testing.T) string {
	t.Helper()
	h, err := os.Hostname()
	if err != nil {
		t.Fatalf("hostname: %v", err)
	}
	return h
}

func TestLoadConfigRequiredVariables(t *testing.T) {
	var got []string
	for _, v := range app.Vars {
		if v.Required {
			got = append(got, v.Name)
		}
	}
	want := []string{"DATABASE_URL", "BASE_URL", "KEYCLOAK_URL", "KEYCLOAK_ADMIN_CLIENT_SECRET", "SECRET_KEY"}
	if !slices.Equal(got, want) {
		t.Errorf("required variables = %v, want %v", got, want)
	}
}

func TestLoadConfigMissingRequired(t *testing.T) {
	for _, name := range []string{"DATABASE_URL", "BASE_URL", "KEYCLOAK_URL", "KEYCLOAK_ADMIN_CLIENT_SECRET", "SECRET_KEY"} {
		for _, value := range []string{"", "  \t "} {
			t.Run(fmt.Sprintf("%s=%q", name, value), func(t *testing.T) {
				cfg, err := load(t, with(requiredEnv(), name, value))
				if err == nil {
					t.Fatalf("LoadConfig without %s: no error, config %+v", name, cfg)
				}
				msg := err.Error()
				if !strings.Contains(msg, name) {
					t.Errorf("error %q does not name %s", msg, name)
				}
				if !strings.Contains(msg, "missing") {
					t.Errorf("error %q does not say the variable is missing", msg)
				}
				if strings.ContainsAny(msg, "\r\n") {
					t.Errorf("error %q is more than one line", msg)
				}
				if !reflect.DeepEqual(cfg, app.Config{}) {
					t.Errorf("config = %+v, want the zero Config with an error", cfg)
				}
			})
		}
	}
}

// TestLoadConfigMissingReportsFirst: with nothing set the first required
// variable is named, as `espmdm serve` in an empty environment shows.
func TestLoadConfigMissingReportsFirst(t *testing.T) {
	_, err := load(t, map[string]string{})
	if err == nil {
		t.Fatal("LoadConfig of an empty environment: no error")
	}
	if got := err.Error(); !strings.HasPrefix(got, "missing required environment variable DATABASE_URL") {
		t.Errorf("error = %q, want it to start with %q", got, "missing required environment variable DATABASE_URL")
	}
}

func TestCoredumpWorkersZero(t *testing.T) {
	for v, want := range map[string]int{"on": 10000, "off": 0, "0": 0, "500": 500} {
		if got := mustLoad(t, with(requiredEnv(), "DEVICE_CACHE", v)); got.DeviceCache != want {
			t.Errorf("DEVICE_CACHE=%s loaded as %d, want %d", v, got.DeviceCache, want)
		}
	}
	if got := mustLoad(t, with(requiredEnv(), "COREDUMP_WORKERS", "0")); got.CoredumpWorkers != 0 {
		t.Errorf("COREDUMP_WORKERS=0 loaded as %d", got.CoredumpWorkers)
	}
}

func TestLoadConfigInvalidValue(t *testing.T) {
	tests := []struct {
		name, value string
	}{
		{"MIGRATE_ON_START", secretValue},
		{"MIGRATE_ON_START", "yes-" + secretValue},
		{"AUTH_DISABLED", secretValue},
		{"RECONCILE_INTERVAL", secretValue},
		{"RECONCILE_INTERVAL", "-90s"},
		{"RECONCILE_INTERVAL", "0h"},
		{"RECONCILE_INTERVAL", "600"}, // no unit
		{"SHUTDOWN_TIMEOUT", secretValue},
		{"SHUTDOWN_TIMEOUT", "-20s"},
		{"BASE_URL", secretValue},
		{"BASE_URL", "ftp://" + secretValue + "/"},
		{"BASE_URL", "http://"},
		{"KEYCLOAK_URL", "mqtt://" + secretValue + ":1883"},
		{"KEYCLOAK_URL", "//" + secretValue},
		{"OIDC_ISSUER_URL", "file:///" + secretValue},
		{"OIDC_TOKEN_URL", secretValue},
		{"LOG_LEVEL", secretValue},
		{"LOG_LEVEL", "trace"},
		{"LOG_FORMAT", secretValue},
		{"LOG_FORMAT", "logfmt"},
		{"FIRMWARE_MAX_BYTES", secretValue},
		{"FIRMWARE_MAX_BYTES", "-16777216"},
		{"FIRMWARE_MAX_BYTES", "16MiB"},
		{"FIRMWARE_MAX_BYTES", "99999999999999999999"}, // overflows int64
		{"JSON_MAX_BYTES", "0"},
		{"IOT_MAX_BYTES", "4KiB"},
		{"DEVICE_RATE_LIMIT", "-1"},
		{"DEVICE_RATE_LIMIT", "5/s"},
		{"DEVICE_RATE_BURST", "0"},
		{"UNAUTH_RATE_LIMIT", secretValue},
		{"UNAUTH_RATE_BURST", "-2"},
		{"TRUSTED_PROXIES", "10.0.0.0/33"},
		{"TRUSTED_PROXIES", "10.0.0.1, " + secretValue},
		{"MQTT_URL", secretValue},
		{"MQTT_URL", "mqtt://user:" + secretValue + "@%zz"},
		{"ROTATION_CRON", secretValue},
		{"ROTATION_CRON", "0 8 * *"},
		{"ROTATION_CRON", "0 25 * * *"},
		{"ROTATION_CRON", "0 8 * * 6#5"},
		{"ROTATION_TZ", "Mars/" + secretValue},
		{"ROTATION_MODE", "lenient"},
		{"MQTT_AUTH", "anonymous"},
		{"MQTT_AUTH_GRACE", "sometimes"},
		{"ROTATION_CONCURRENCY", "0"},
		{"ROTATION_CONCURRENCY", "-3"},
		{"ROTATION_TIMEOUT_SECONDS", "5m"},
		{"ROTATION_TICK_SECONDS", "0"},
		{"ROTATION_RETRY_SECONDS", secretValue},
		{"ROTATION_GRACE", "0s"},
		{"ROTATION_GRACE", "1.5s"},
		{"ROTATION_GRACE", "-7d"},
		{"ROTATION_WARNING_DAYS", "0"},
		{"ROTATION_CRITICAL_DAYS", "30"}, // not above the warning age (45)
		{"BLOB_STORE", "gcs"},
		{"BLOB_STORE", secretValue},
		{"S3_FORCE_PATH_STYLE", secretValue},
		{"DEVICE_STALE_SECONDS", "0"},
		{"DEVICE_STALE_SECONDS", "1d"},
		{"DEVICE_STALE_SECONDS", secretValue},
		{"DEVICE_CACHE", "yes"},
		{"DEVICE_CACHE", "-1"},
		{"DEVICE_CACHE", secretValue},
		{"COREDUMP_WORKERS", "-1"},
		{"COREDUMP_WORKERS", "65"},
		{"COREDUMP_WORKERS", secretValue},
		{"COREDUMP_KEEP", "0"},
		{"COREDUMP_MAX_BYTES", "0"},
		{"COREDUMP_TIMEOUT", secretValue},
	}
	for _, tt := range tests {
		t.Run(tt.name+"="+tt.value, func(t *testing.T) {
			_, err := load(t, with(requiredEnv(), tt.name, tt.value))
			if err == nil {
				t.Fatalf("LoadConfig accepted %s=%q", tt.name, tt.value)
			}
			msg := err.Error()
			if !strings.HasPrefix(msg, "invalid "+tt.name+":") {
				t.Errorf("error %q, want it to start with %q", msg, "invalid "+tt.name+":")
			}
			if strings.Contains(msg, tt.value) || strings.Contains(msg, secretValue) {
				t.Errorf("error %q shows the value given", msg)
			}
			if strings.ContainsAny(msg, "\r\n") {
				t.Errorf("error %q is more than one line", msg)
			}
		})
	}
}

// TestLoadConfigSecretsNeverInErrors: whatever else is wrong, the values of
// the secret variables do not appear in the error.
func TestLoadConfigSecretsNeverInErrors(t *testing.T) {
	env := requiredEnv()
	for _, v := range app.Vars {
		if v.Secret {
			env[v.Name] = secretValue + "-" + strings.ToLower(v.Name)
		}
	}
	for _, v := range app.Vars {
		if v.Secret {
			continue
		}
		t.Run(v.Name, func(t *testing.T) {
			_, err := load(t, with(env, v.Name, secretValue))
			if err == nil {
				return // a free-form variable: nothing to report
			}
			if strings.Contains(err.Error(), secretValue) {
				t.Errorf("error %q shows a value", err)
			}
		})
	}
}

func TestLoadConfigDefaults(t *testing.T) {
	want := app.Config{
		DatabaseURL:               "postgres://espmdm:pw@db.example.com:5432/espmdm?sslmode=disable",
		HTTPAddr:                  ":8080",
		BaseURL:                   "https://mdm.example.com",
		MigrateOnStart:            true,
		OIDCIssuerURL:             "https://sso.example.com/realms/iot",
		OIDCTokenURL:              "https://sso.example.com/realms/iot/protocol/openid-connect/token",
		DeviceAudience:            "espmdm-iot",
		AdminRole:                 "mdm-admin",
		ViewerRole:                "mdm-viewer",
		PipelineRole:              "mdm-pipeline",
		AuthDisabled:              false,
		KeycloakURL:               "https://sso.example.com",
		KeycloakRealm:             "iot",
		KeycloakAdminClientID:     "iotsupport-admin",
		KeycloakAdminClientSecret: "admin-secret",
		KeycloakMaxConcurrency:    8,
		MQTTURL:                   "",
		MQTTClientID:              "espmdm-" + hostname(t),
		MQTTAuth:                  "dynsec",
		WiFiSSID:                  "",
		WiFiPassword:              "",
		BlobStore:                 "fs",
		FirmwareDir:               "./data/firmware",
		S3:                        s3store.Config{Endpoint: "https://s3.amazonaws.com", Region: "us-east-1"},
		FirmwareMaxBytes:          16 << 20,
		JSONMaxBytes:              1 << 20,
		IoTMaxBytes:               4 << 10,
		DeviceRateLimit:           300,
		DeviceRateBurst:           60,
		UnauthRateLimit:           120,
		UnauthRateBurst:           100,
		SecretKey:                 strings.Repeat("ab", 32),
		RotationCron:              "0 8 * * 6#1",
		RotationTZ:                "UTC",
		RotationTimeout:           300 * time.Second,
		RotationFetchTimeout:      60 * time.Second,
		RotationConcurrency:       10,
		RotationTick:              30 * time.Second,
		RotationRetry:             3600 * time.Second,
		RotationMode:              "auto",
		RotationGrace:             7 * 24 * time.Hour,
		RotationWarningAge:        45 * 24 * time.Hour,
		RotationCriticalAge:       90 * 24 * time.Hour,
		DeviceCache:               10000,
		DeviceStale:               24 * time.Hour,
		CampaignTick:              2 * time.Second,
		CoredumpMaxBytes:          1 << 20,
		ELFMaxBytes:               512 << 20,
		CoredumpKeep:              20,
		CoredumpWorkers:           1,
		CoredumpTimeout:           2 * time.Minute,
		CoredumpPoll:              10 * time.Second,
		CoredumpTool:              coredump.DefaultTool(),
		CoredumpGDB:               "gdb-multiarch",
		InstanceName:              "espmdm@" + hostname(t) + ":" + strconv.Itoa(os.Getpid()),
		ReconcileInterval:         10 * time.Minute,
		ShutdownTimeout:           20 * time.Second,
		LogLevel:                  "info",
		LogFormat:                 "json",
	}
	if got := mustLoad(t, requiredEnv()); !reflect.DeepEqual(got, want) {
		t.Errorf("LoadConfig(required only) =\n%+v\nwant\n%+v", got, want)
	}
}

// TestVarsDefaultsMatchLoadConfig: each literal default of app.Vars (what
// --help shows) is what LoadConfig uses when the variable is unset, and
// each derived one ($...) is documented the way LoadConfig derives it.
func TestVarsDefaultsMatchLoadConfig(t *testing.T) {
	base := mustLoad(t, requiredEnv())
	derived := map[string]string{
		"OIDC_ISSUER_URL": "$KEYCLOAK_URL/realms/$KEYCLOAK_REALM",
		"OIDC_TOKEN_URL":  "$OIDC_ISSUER_URL/protocol/openid-connect/token",
		"MQTT_CLIENT_ID":  "espmdm-$HOSTNAME",
		"INSTANCE_NAME":   "espmdm@$HOSTNAME:$PID",
		"COREDUMP_TOOL":   "$ESPMDM_CACHE_DIR/coredump-" + coredump.ToolVersion + "/bin/esp-coredump",
	}
	for _, v := range app.Vars {
		t.Run(v.Name, func(t *testing.T) {
			switch {
			case v.Required:
				if v.Default != "" {
					t.Errorf("required variable has default %q", v.Default)
				}
			case strings.Contains(v.Default, "$"):
				if want, ok := derived[v.Name]; !ok || v.Default != want {
					t.Errorf("derived default = %q, want %q", v.Default, want)
				}
			default:
				got := mustLoad(t, with(requiredEnv(), v.Name, v.Default))
				if !reflect.DeepEqual(got, base) {
					t.Errorf("%s=%q explicitly gives\n%+v\nunset gives\n%+v", v.Name, v.Default, got, base)
				}
			}
		})
	}
	// The derived defaults, spelled out with the defaults' own values.
	hostEnv := map[string]string{"$KEYCLOAK_URL": base.KeycloakURL, "$KEYCLOAK_REALM": base.KeycloakRealm,
		"$OIDC_ISSUER_URL": base.OIDCIssuerURL, "$HOSTNAME": hostname(t)}
	expand := func(s string) string {
		for k, v := range hostEnv {
			s = strings.ReplaceAll(s, k, v)
		}
		return s
	}
	for name, got := range map[string]string{"OIDC_ISSUER_URL": base.OIDCIssuerURL, "OIDC_TOKEN_URL": base.OIDCTokenURL, "MQTT_CLIENT_ID": base.MQTTClientID} {
		if want := expand(derived[name]); got != want {
			t.Errorf("%s = %q, want %q (%s)", name, got, want, derived[name])
		}
	}
}

func TestLoadConfigDerived(t *testing.T) {
	tests := []struct {
		name                    string
		env                     map[string]string
		issuer, token, base, kc string
	}{
		{
			name:   "defaults",
			env:    requiredEnv(),
			issuer: "https://sso.example.com/realms/iot",
			token:  "https://sso.example.com/realms/iot/protocol/openid-connect/token",
			base:   "https://mdm.example.com", kc: "https://sso.example.com",
		},
		{
			name:   "realm",
			env:    with(requiredEnv(), "KEYCLOAK_REALM", "fleet"),
			issuer: "https://sso.example.com/realms/fleet",
			token:  "https://sso.example.com/realms/fleet/protocol/openid-connect/token",
			base:   "https://mdm.example.com", kc: "https://sso.example.com",
		},
		{
			name:   "trailing slashes trimmed",
			env:    with(requiredEnv(), "KEYCLOAK_URL", "http://127.0.0.1:8081/auth/", "BASE_URL", "https://mdm.example.com/"),
			issuer: "http://127.0.0.1:8081/auth/realms/iot",
			token:  "http://127.0.0.1:8081/auth/realms/iot/protocol/openid-connect/token",
			base:   "https://mdm.example.com", kc: "http://127.0.0.1:8081/auth",
		},
		{
			name:   "token URL from an explicit issuer",
			env:    with(requiredEnv(), "OIDC_ISSUER_URL", "https://id.example.com/realms/iot/"),
			issuer: "https://id.example.com/realms/iot",
			token:  "https://id.example.com/realms/iot/protocol/openid-connect/token",
			base:   "https://mdm.example.com", kc: "https://sso.example.com",
		},
		{
			name: "explicit token URL wins",
			env: with(requiredEnv(), "OIDC_ISSUER_URL", "https://id.example.com/realms/iot",
				"OIDC_TOKEN_URL", "https://gw.example.com/token/"),
			issuer: "https://id.example.com/realms/iot",
			token:  "https://gw.example.com/token",
			base:   "https://mdm.example.com", kc: "https://sso.example.com",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := mustLoad(t, tt.env)
			for _, c := range []struct{ field, got, want string }{
				{"OIDCIssuerURL", cfg.OIDCIssuerURL, tt.issuer},
				{"OIDCTokenURL", cfg.OIDCTokenURL, tt.token},
				{"BaseURL", cfg.BaseURL, tt.base},
				{"KeycloakURL", cfg.KeycloakURL, tt.kc},
			} {
				if c.got != c.want {
					t.Errorf("%s = %q, want %q", c.field, c.got, c.want)
				}
			}
		})
	}
}

func TestLoadConfigMQTTClientID(t *testing.T) {
	tests := []struct {
		name string
		env  map[string]string
		want string
	}{
		{"default", requiredEnv(), "espmdm-" + hostname(t)},
		{"explicit", with(requiredEnv(), "MQTT_CLIENT_ID", "espmdm-a"), "espmdm-a"},
		{"blank is unset", with(requiredEnv(), "MQTT_CLIENT_ID", "  "), "espmdm-" + hostname(t)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := mustLoad(t, tt.env).MQTTClientID; got != tt.want {
				t.Errorf("MQTTClientID = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestLoadConfigValues(t *testing.T) {
	cfg := mustLoad(t, with(requiredEnv(),
		"HTTP_ADDR", "127.0.0.1:9000",
		"MIGRATE_ON_START", "false",
		"AUTH_DISABLED", " true ",
		"MQTT_URL", "mqtts://broker.example.com:8883",
		"FIRMWARE_MAX_BYTES", "1048576",
		"RECONCILE_INTERVAL", "90s",
		"SHUTDOWN_TIMEOUT", "1m30s",
		"LOG_LEVEL", "debug",
		"LOG_FORMAT", "console",
		"WIFI_SSID", "shop floor",
	))
	for _, c := range []struct {
		field     string
		got, want any
	}{
		{"HTTPAddr", cfg.HTTPAddr, "127.0.0.1:9000"},
		{"MigrateOnStart", cfg.MigrateOnStart, false},
		{"AuthDisabled", cfg.AuthDisabled, true},
		{"MQTTURL", cfg.MQTTURL, "mqtts://broker.example.com:8883"},
		{"FirmwareMaxBytes", cfg.FirmwareMaxBytes, int64(1 << 20)},
		{"ReconcileInterval", cfg.ReconcileInterval, 90 * time.Second},
		{"ShutdownTimeout", cfg.ShutdownTimeout, 90 * time.Second},
		{"LogLevel", cfg.LogLevel, "debug"},
		{"LogFormat", cfg.LogFormat, "console"},
		{"WiFiSSID", cfg.WiFiSSID, "shop floor"},
	} {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.field, c.got, c.want)
		}
	}
}

func TestHelpTextNamesEveryVariable(t *testing.T) {
	help := app.HelpText()
	lines := map[string]string{}
	for _, line := range strings.Split(strings.TrimRight(help, "\n"), "\n") {
		if f := strings.Fields(line); len(f) > 0 {
			lines[f[0]] = line
		}
	}
	for _, v := range app.Vars {
		line, ok := lines[v.Name]
		if !ok {
			t.Errorf("HelpText has no line for %s", v.Name)
			continue
		}
		want := v.Default
		if v.Required {
			want = "(required)"
		}
		if want != "" && !strings.Contains(line, " "+want+" ") {
			t.Errorf("%s line %q does not show %q", v.Name, line, want)
		}
		if !strings.Contains(line, v.Help) {
			t.Errorf("%s line %q does not carry its help %q", v.Name, line, v.Help)
		}
	}
	if len(lines) != len(app.Vars) {
		t.Errorf("HelpText has %d lines, want one per variable (%d)", len(lines), len(app.Vars))
	}
}

func TestDeviceMQTTURLDropsCredentials(t *testing.T) {
	for in, want := range map[string]string{
		"mqtt://espmdm:s3cr3t@broker.example.com:1883": "mqtt://broker.example.com:1883",
		"mqtts://espmdm@broker.example.com":            "mqtts://broker.example.com",
		"mqtt://broker.example.com:1883":               "mqtt://broker.example.com:1883",
		"":                                             "",
	} {
		if got := app.DeviceMQTTURL(in); got != want {
			t.Errorf("DeviceMQTTURL(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestParseGrace(t *testing.T) {
	for in, want := range map[string]time.Duration{"7d": 7 * 24 * time.Hour, "168h": 168 * time.Hour, "90m": 90 * time.Minute, "1d": 24 * time.Hour} {
		if got, err := app.ParseGrace(in); err != nil || got != want {
			t.Errorf("ParseGrace(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "d", "7", "0d", "-1d", "1.5d", "500ms", "3651d"} {
		if _, err := app.ParseGrace(in); err == nil {
			t.Errorf("ParseGrace(%q) accepted", in)
		}
	}
}

// s3Env is requiredEnv with a complete BLOB_STORE=s3 configuration.
func s3Env(kv ...string) map[string]string {
	return with(with(requiredEnv(), "BLOB_STORE", "s3", "S3_ENDPOINT", "http://minio.internal:9000", "S3_REGION", "eu-central-1",
		"S3_BUCKET", "firmware", "S3_PREFIX", "prod", "S3_ACCESS_KEY_ID", "AKIAEXAMPLE",
		"S3_SECRET_ACCESS_KEY", secretValue, "S3_FORCE_PATH_STYLE", "true"), kv...)
}

// BLOB_STORE=s3 reads every S3_* variable; the directory store reads none
// of them, so they need not be set.
func TestLoadConfigBlobStore(t *testing.T) {
	got := mustLoad(t, s3Env())
	want := s3store.Config{Endpoint: "http://minio.internal:9000", Region: "eu-central-1", Bucket: "firmware", Prefix: "prod",
		AccessKeyID: "AKIAEXAMPLE", SecretAccessKey: secretValue, ForcePathStyle: true}
	if got.BlobStore != "s3" || got.S3 != want {
		t.Errorf("BLOB_STORE=s3: %q, %+v; want s3, %+v", got.BlobStore, got.S3, want)
	}
	if aws := mustLoad(t, s3Env("S3_ENDPOINT", "", "S3_REGION", "", "S3_FORCE_PATH_STYLE", "")); aws.S3.Endpoint != "https://s3.amazonaws.com" ||
		aws.S3.Region != "us-east-1" || aws.S3.ForcePathStyle {
		t.Errorf("BLOB_STORE=s3 with the defaults: %+v, want AWS in us-east-1, virtual-host style", aws.S3)
	}
	if fs := mustLoad(t, with(requiredEnv(), "BLOB_STORE", "fs", "S3_ENDPOINT", "not a URL")); fs.BlobStore != "fs" {
		t.Errorf("BLOB_STORE=fs: %q", fs.BlobStore)
	}
}

// With BLOB_STORE=s3 a missing or wrong S3_* variable is named in one
// line, and no value (the secret least of all) is shown.
func TestLoadConfigBlobStoreErrors(t *testing.T) {
	for _, c := range []struct{ name, value string }{
		{"S3_BUCKET", ""},
		{"S3_ACCESS_KEY_ID", ""},
		{"S3_SECRET_ACCESS_KEY", ""},
		{"S3_ENDPOINT", "ftp://" + secretValue},
		{"S3_ENDPOINT", "https://" + secretValue + "/bucket"},
		{"S3_ENDPOINT", "https://user:" + secretValue + "@minio"},
		{"S3_PREFIX", "/" + secretValue},
	} {
		t.Run(c.name+"="+c.value, func(t *testing.T) {
			_, err := load(t, s3Env(c.name, c.value))
			if err == nil {
				t.Fatalf("LoadConfig accepted BLOB_STORE=s3 with %s=%q", c.name, c.value)
			}
			msg := err.Error()
			if !strings.Contains(msg, c.name) || strings.Contains(msg, secretValue) || strings.ContainsAny(msg, "\r\n") {
				t.Errorf("error %q: want one line naming %s, without a value", msg, c.name)
			}
		})
	}
}

// LoadBlobConfig (espmdm blobs migrate) reads FIRMWARE_DIR and the S3_*
// variables alone: nothing else is required, and the S3 ones are checked
// whatever BLOB_STORE says, naming the variable without its value.
func TestLoadBlobConfig(t *testing.T) {
	env := s3Env("BLOB_STORE", "", "FIRMWARE_DIR", "/srv/firmware")
	for k := range requiredEnv() {
		delete(env, k)
	}
	got, err := app.LoadBlobConfig(func(k string) string { return env[k] })
	if err != nil {
		t.Fatalf("LoadBlobConfig without the server's variables: %v", err)
	}
	want := s3store.Config{Endpoint: "http://minio.internal:9000", Region: "eu-central-1", Bucket: "firmware", Prefix: "prod",
		AccessKeyID: "AKIAEXAMPLE", SecretAccessKey: secretValue, ForcePathStyle: true}
	if got.FirmwareDir != "/srv/firmware" || got.S3 != want || got.BlobStore != "fs" {
		t.Errorf("LoadBlobConfig: dir %q, store %q, %+v; want /srv/firmware, fs, %+v", got.FirmwareDir, got.BlobStore, got.S3, want)
	}
	if got.DatabaseURL != "" || got.BaseURL != "" {
		t.Errorf("LoadBlobConfig read more than the blob store's variables: %+v", got)
	}
	for _, name := range []string{"S3_BUCKET", "S3_SECRET_ACCESS_KEY"} {
		bad := with(env, name, "")
		_, err := app.LoadBlobConfig(func(k string) string { return bad[k] })
		if err == nil || !strings.Contains(err.Error(), name) || strings.Contains(err.Error(), secretValue) {
			t.Errorf("LoadBlobConfig without %s: %v; want an error naming it, without a value", name, err)
		}
	}
}
