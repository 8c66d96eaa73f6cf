package s3store

import (
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
)

// Config says where the bucket is and how to reach it. The fields are
// SPEC §20's S3_* variables.
type Config struct {
	// Endpoint is the store's URL, http:// or https:// with a host and an
	// optional port and nothing else (S3_ENDPOINT); empty is AWS S3,
	// https://s3.amazonaws.com.
	Endpoint string
	// Region is the bucket's region (S3_REGION, default us-east-1); S3
	// signs every request for it.
	Region string
	// Bucket must exist (S3_BUCKET, required): espmdm does not create it.
	Bucket string
	// Prefix is prepended to every object name (S3_PREFIX), so one bucket
	// can hold the blobs of several deployments. A "/" is added when it
	// has none at its end.
	Prefix string
	// AccessKeyID and SecretAccessKey sign the requests
	// (S3_ACCESS_KEY_ID, S3_SECRET_ACCESS_KEY, both required).
	AccessKeyID     string
	SecretAccessKey string
	// ForcePathStyle addresses the bucket in the path
	// (endpoint/bucket/key) rather than in the host name
	// (bucket.endpoint/key): what MinIO, Ceph, Garage and S3Proxy
	// usually need (S3_FORCE_PATH_STYLE). Without it the client picks:
	// virtual-host style for AWS, path style elsewhere.
	ForcePathStyle bool
}

// DefaultEndpoint is AWS S3's global endpoint, used when Config.Endpoint is
// empty.
const DefaultEndpoint = "https://s3.amazonaws.com"

// DefaultRegion is Config.Region's default.
const DefaultRegion = "us-east-1"

// ConfigFromEnv reads the S3_* variables through getenv (os.Getenv). A
// missing required variable is an error naming it; values (the secret
// among them) are never part of an error.
func ConfigFromEnv(getenv func(string) string) (Config, error) {
	c := Config{
		Endpoint:        getenv("S3_ENDPOINT"),
		Region:          getenv("S3_REGION"),
		Bucket:          getenv("S3_BUCKET"),
		Prefix:          getenv("S3_PREFIX"),
		AccessKeyID:     getenv("S3_ACCESS_KEY_ID"),
		SecretAccessKey: getenv("S3_SECRET_ACCESS_KEY"),
	}
	if v := getenv("S3_FORCE_PATH_STYLE"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return Config{}, errors.New("S3_FORCE_PATH_STYLE must be true or false")
		}
		c.ForcePathStyle = b
	}
	return c, c.Validate()
}

// Validate reports the first problem of the configuration, naming the
// variable (S3_BUCKET, S3_ENDPOINT...) and never a value.
func (c Config) Validate() error {
	for _, v := range []struct{ name, value string }{
		{"S3_BUCKET", c.Bucket}, {"S3_ACCESS_KEY_ID", c.AccessKeyID}, {"S3_SECRET_ACCESS_KEY", c.SecretAccessKey},
	} {
		if v.value == "" {
			return fmt.Errorf("%s is required with the S3 blob store", v.name)
		}
	}
	if _, _, err := c.endpoint(); err != nil {
		return err
	}
	if strings.HasPrefix(c.Prefix, "/") {
		return errors.New("S3_PREFIX must not start with /")
	}
	return nil
}

// endpoint is the host[:port] of Endpoint and whether it is HTTPS.
func (c Config) endpoint() (host string, secure bool, err error) {
	raw := c.Endpoint
	if raw == "" {
		raw = DefaultEndpoint
	}
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") ||
		(u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.User != nil {
		return "", false, errors.New("S3_ENDPOINT must be an http:// or https:// URL with a host and nothing after it (no path, query or credentials)")
	}
	return u.Host, u.Scheme == "https", nil
}

// prefix is Prefix with the "/" it ends in.
func (c Config) prefix() string {
	if c.Prefix == "" || strings.HasSuffix(c.Prefix, "/") {
		return c.Prefix
	}
	return c.Prefix + "/"
}

// region is Region or its default.
func (c Config) region() string {
	if c.Region == "" {
		return DefaultRegion
	}
	return c.Region
}
