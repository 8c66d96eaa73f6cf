package integration

import (
	"path/filepath"
	"strconv"
	"testing"
)

// A data directory first used without S3 gets the S3 port and secret
// added on the first run with S3, and keeps everything else; later runs
// read them back.
func TestPersistedAddsS3ToAnExistingDataDirectory(t *testing.T) {
	path := filepath.Join(t.TempDir(), "stack.env")
	first := &Stack{AdminClientSecret: "a", OperatorClientSecret: "o", ViewerClientSecret: "v", KeycloakAdminPassword: "k"}
	ports, err := first.persisted(path, false)
	if err != nil {
		t.Fatalf("first run: %v", err)
	}
	if len(ports) != 5 || ports[4] != 0 {
		t.Fatalf("first run without S3: ports %v, want four and a zero", ports)
	}
	env, err := ReadEnvFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := env["S3_PORT"]; ok {
		t.Errorf("a run without S3 wrote S3_PORT")
	}

	second := &Stack{AdminClientSecret: "other", OperatorClientSecret: "other", ViewerClientSecret: "other", KeycloakAdminPassword: "other", S3SecretAccessKey: "s3secret"}
	ports2, err := second.persisted(path, true)
	if err != nil {
		t.Fatalf("run with S3: %v", err)
	}
	if len(ports2) != 5 || ports2[4] <= 0 {
		t.Fatalf("run with S3: ports %v, want five", ports2)
	}
	for i := range 4 {
		if ports2[i] != ports[i] {
			t.Errorf("port %d changed from %d to %d", i, ports[i], ports2[i])
		}
	}
	if second.AdminClientSecret != "a" || second.KeycloakAdminPassword != "k" || second.S3SecretAccessKey != "s3secret" {
		t.Errorf("secrets after the S3 run: admin %q, keycloak %q, s3 %q; want the first run's and the new S3 one",
			second.AdminClientSecret, second.KeycloakAdminPassword, second.S3SecretAccessKey)
	}

	third := &Stack{S3SecretAccessKey: "fresh"}
	ports3, err := third.persisted(path, true)
	if err != nil {
		t.Fatalf("third run: %v", err)
	}
	if ports3[4] != ports2[4] || third.S3SecretAccessKey != "s3secret" {
		t.Errorf("third run: S3 port %d, secret %q; want %d and the second run's", ports3[4], third.S3SecretAccessKey, ports2[4])
	}

	env, _ = ReadEnvFile(path)
	delete(env, "MQTT_PORT")
	if err := WriteEnvFile(path, env); err != nil {
		t.Fatal(err)
	}
	if _, err := (&Stack{}).persisted(path, true); err == nil {
		t.Errorf("a data directory without MQTT_PORT was accepted")
	}
}

// The S3 server's whereabouts go through the env file to attached test
// binaries, under the names `espmdm serve` reads.
func TestS3EnvSurvivesAttach(t *testing.T) {
	st := &Stack{
		DatabaseURL: "postgres://x", KeycloakURL: "http://k", MQTTURL: "mqtt://m", TokenURL: "http://k/token",
		S3Endpoint: "http://127.0.0.1:" + strconv.Itoa(9), S3Region: DefaultS3Region, S3Bucket: DefaultS3Bucket,
		S3AccessKeyID: DefaultS3AccessKey, S3SecretAccessKey: "secret",
	}
	path := filepath.Join(t.TempDir(), "stack.env")
	if err := WriteEnvFile(path, st.Env()); err != nil {
		t.Fatal(err)
	}
	got, err := Attach(path)
	if err != nil {
		t.Fatal(err)
	}
	if got.S3Endpoint != st.S3Endpoint || got.S3Region != st.S3Region || got.S3Bucket != st.S3Bucket ||
		got.S3AccessKeyID != st.S3AccessKeyID || got.S3SecretAccessKey != st.S3SecretAccessKey {
		t.Errorf("attached S3 = %s %s %s %s %s, want %s %s %s %s %s", got.S3Endpoint, got.S3Region, got.S3Bucket, got.S3AccessKeyID, got.S3SecretAccessKey,
			st.S3Endpoint, st.S3Region, st.S3Bucket, st.S3AccessKeyID, st.S3SecretAccessKey)
	}
	if env := got.ServeEnv(); env["S3_FORCE_PATH_STYLE"] != "true" || env["S3_ENDPOINT"] != st.S3Endpoint {
		t.Errorf("ServeEnv lacks the S3 variables: %v", env)
	}
	if env := (&Stack{}).Env(); env["S3_ENDPOINT"] != "" {
		t.Errorf("a stack without S3 names an S3 endpoint")
	}
}
