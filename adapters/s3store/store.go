// Package s3store implements ports.BlobStore on an S3-compatible object
// store (AWS S3, MinIO, Ceph RGW, Garage, S3Proxy, ...) over minio-go, so
// that replicas on several hosts share firmware binaries, ELFs and core
// dumps without a shared volume (SPEC §20).
//
// A blob is the object <prefix><namespace>/<sha256>.bin (".elf", ".core"):
// the same name, under the prefix, as in a filesystem store's directory.
// PutBlob streams: content of a known size goes out as one PUT as it is
// read; content of unknown size is read up to 5 MiB first, and goes out as
// one PUT if it ended there, else as a multipart upload of 5 MiB parts
// (about two parts in memory). The content is checked while it streams and the
// bytes that would complete the object are held back until it passed, so
// refused or interrupted content never becomes an object (a multipart
// upload that fails is aborted; a bucket lifecycle rule that aborts
// incomplete uploads after a day catches the ones an abort could not
// reach). OpenBlob asks for the object's size (HEAD) and reads with ranged
// GETs from wherever the reader seeks to.
//
// Errors: a missing object is model.ErrBlobNotFound; any failure of the
// store (unreachable, 5xx, refused credentials, the bucket gone) is a
// *model.UnavailableError with Service model.ServiceBlobStore. New checks
// the bucket once, so a wrong name, endpoint or key stops start-up with an
// error that says which.
package s3store

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/espmdm/espmdm/adapters/internal/blobcheck"
	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/ports"
)

// Store is a BlobStore in one bucket under one prefix. It is safe for
// concurrent use.
type Store struct {
	client *minio.Client
	core   minio.Core
	bucket string
	prefix string
	where  string // for messages: "bucket B at URL"
	tr     *http.Transport
}

var _ ports.BlobStore = (*Store)(nil)

// firstParts holds the buffers in which PutBlob reads the first part of
// content of unknown size (one byte more than a part, to see whether it
// ends within it).
var firstParts = sync.Pool{New: func() any { b := make([]byte, partSize+1); return &b }}

const (
	// partSize is the part of a multipart upload (content of unknown
	// size): S3's smallest, as it is what an upload holds in memory.
	partSize = 5 << 20
	// maxRetries bounds the client's retries of a request that failed on
	// the network or with a retryable status (200 ms, 400 ms between
	// them), so a store that is down is reported in about a second.
	maxRetries = 3
)

// New connects to the bucket of cfg and checks, with one listing of the
// prefix, that it exists and that the credentials may read it: a missing
// bucket, refused credentials and an unreachable endpoint are three
// different errors, the last one a *model.UnavailableError. ctx bounds that
// check only.
func New(ctx context.Context, cfg Config) (*Store, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("s3store: %w", err)
	}
	host, secure, _ := cfg.endpoint()
	tr := &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:          64,
		MaxIdleConnsPerHost:   32,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ResponseHeaderTimeout: 60 * time.Second,
		ExpectContinueTimeout: time.Second,
		TLSClientConfig:       &tls.Config{MinVersion: tls.VersionTLS12},
		// Blobs are binaries: compression buys nothing, and a transparently
		// decompressed body would break ranged reads.
		DisableCompression: true,
	}
	lookup := minio.BucketLookupAuto
	if cfg.ForcePathStyle {
		lookup = minio.BucketLookupPath
	}
	client, err := minio.New(host, &minio.Options{
		Creds:        credentials.NewStaticV4(cfg.AccessKeyID, cfg.SecretAccessKey, ""),
		Secure:       secure,
		Transport:    tr,
		Region:       cfg.region(),
		BucketLookup: lookup,
		MaxRetries:   maxRetries,
	})
	if err != nil {
		return nil, fmt.Errorf("s3store: %w", err)
	}
	scheme := "http"
	if secure {
		scheme = "https"
	}
	s := &Store{
		client: client, core: minio.Core{Client: client},
		bucket: cfg.Bucket, prefix: cfg.prefix(),
		where: fmt.Sprintf("bucket %q at %s://%s", cfg.Bucket, scheme, host),
		tr:    tr,
	}
	if err := s.checkBucket(ctx); err != nil {
		tr.CloseIdleConnections()
		return nil, err
	}
	return s, nil
}

// Close releases the store's idle connections.
func (s *Store) Close() error {
	s.tr.CloseIdleConnections()
	return nil
}

// Prefix is the prefix of every object name, with its "/" (or "").
func (s *Store) Prefix() string { return s.prefix }

// checkBucket is New's check: a readable listing of the prefix.
func (s *Store) checkBucket(ctx context.Context) error {
	err := s.listOne(ctx)
	if err == nil {
		return nil
	}
	switch code := minio.ToErrorResponse(err).Code; code {
	case "NoSuchBucket":
		return fmt.Errorf("s3store: %s does not exist: create it (espmdm does not create buckets)", s.where)
	case "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken":
		return fmt.Errorf("s3store: %s refused to list %q (%s): check S3_ACCESS_KEY_ID, S3_SECRET_ACCESS_KEY, S3_REGION and the bucket policy", s.where, s.prefix, code)
	}
	return s.fail(ctx, "list", s.prefix, err)
}

// listOne lists at most one object of the prefix: the cheapest request
// that proves the bucket exists and may be read (a HEAD of the bucket
// needs a permission on the whole bucket, which a policy limited to the
// prefix does not give).
func (s *Store) listOne(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for obj := range s.client.ListObjectsIter(ctx, s.bucket, minio.ListObjectsOptions{Prefix: s.prefix, MaxKeys: 1, Recursive: true}) {
		return obj.Err
	}
	return ctx.Err()
}

// name is the key's object name.
func (s *Store) name(key ports.BlobKey) string { return s.prefix + key.Path() }

// fail translates a client error: the caller's context ending stays
// that, a missing object is model.ErrBlobNotFound, anything else is the
// store failing.
func (s *Store) fail(ctx context.Context, op, name string, err error) error {
	if cerr := ctx.Err(); cerr != nil {
		return fmt.Errorf("s3store: %s %s: %w", op, name, cerr)
	}
	if code := minio.ToErrorResponse(err).Code; code == "NoSuchKey" {
		return fmt.Errorf("s3store: %s %s: %w", op, name, model.ErrBlobNotFound)
	}
	return &model.UnavailableError{Service: model.ServiceBlobStore, Err: fmt.Errorf("s3store: %s %s in %s: %w", op, name, s.where, err)}
}

// PutBlob implements ports.BlobStore.
func (s *Store) PutBlob(ctx context.Context, key ports.BlobKey, r io.Reader, size, limit int64) (_ ports.BlobInfo, err error) {
	if err := key.Validate(); err != nil {
		return ports.BlobInfo{}, err
	}
	check := blobcheck.New(ctx, r, key, size, limit)
	if err := check.Err(); err != nil {
		return ports.BlobInfo{}, err
	}
	if err := ctx.Err(); err != nil {
		return ports.BlobInfo{}, err
	}
	name := s.name(key)
	var body io.Reader = check
	switch {
	case size == 0:
		// The client reads nothing of an empty body: check it here.
		if _, err := io.Copy(io.Discard, check); err != nil {
			return ports.BlobInfo{}, err
		}
		body = strings.NewReader("")
	case size < 0:
		// Read up to a part first: content that ends within it (checked
		// at its end, as it must be before anything is sent) goes up as
		// one PUT of a known size instead of a multipart upload's three
		// requests.
		bufp := firstParts.Get().(*[]byte)
		buf := *bufp
		defer func() {
			// After a failed request the transport may still be reading
			// the body for a moment: only a finished upload gives the
			// buffer back.
			if check.Done() && err == nil {
				firstParts.Put(bufp)
			}
		}()
		n, rerr := io.ReadFull(check, buf)
		switch {
		case check.Err() != nil:
			return ports.BlobInfo{}, check.Err()
		case errors.Is(rerr, io.EOF), errors.Is(rerr, io.ErrUnexpectedEOF):
			body, size = bytes.NewReader(buf[:n]), int64(n)
		case rerr != nil:
			return ports.BlobInfo{}, rerr
		default: // more than a part
			body = io.MultiReader(bytes.NewReader(buf), check)
		}
	}
	opts := minio.PutObjectOptions{ContentType: "application/octet-stream", PartSize: partSize}
	if size >= 0 {
		// One PUT, streamed as it is read, whatever the size: no part
		// buffers, and the object exists only once the PUT completed.
		opts.DisableMultipart = true
	}
	_, err = s.client.PutObject(ctx, s.bucket, name, body, size, opts)
	if cerr := check.Err(); cerr != nil {
		return ports.BlobInfo{}, cerr // the content's fault or the caller's, whatever the client made of it
	}
	if err != nil {
		return ports.BlobInfo{}, s.fail(ctx, "put", name, err)
	}
	if !check.Done() {
		// The client completed the object without reading the content to
		// its checked end: take it back rather than keep unchecked bytes.
		_ = s.client.RemoveObject(context.WithoutCancel(ctx), s.bucket, name, minio.RemoveObjectOptions{})
		return ports.BlobInfo{}, fmt.Errorf("s3store: put %s: the content was not checked to its end", name)
	}
	return ports.BlobInfo{Key: key, Size: check.Len(), ETag: key.ETag()}, nil
}

// StatBlob implements ports.BlobStore.
func (s *Store) StatBlob(ctx context.Context, key ports.BlobKey) (ports.BlobInfo, error) {
	if err := key.Validate(); err != nil {
		return ports.BlobInfo{}, err
	}
	name := s.name(key)
	oi, err := s.client.StatObject(ctx, s.bucket, name, minio.StatObjectOptions{})
	if err != nil {
		return ports.BlobInfo{}, s.fail(ctx, "stat", name, err)
	}
	return ports.BlobInfo{Key: key, Size: oi.Size, ETag: key.ETag()}, nil
}

// OpenBlob implements ports.BlobStore: a HEAD now, ranged GETs as the blob
// is read.
func (s *Store) OpenBlob(ctx context.Context, key ports.BlobKey) (ports.Blob, error) {
	info, err := s.StatBlob(ctx, key)
	if err != nil {
		return nil, err
	}
	bctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	return &blob{s: s, ctx: bctx, cancel: cancel, name: s.name(key), size: info.Size}, nil
}

// DeleteBlob implements ports.BlobStore.
func (s *Store) DeleteBlob(ctx context.Context, key ports.BlobKey) error {
	if err := key.Validate(); err != nil {
		return err
	}
	name := s.name(key)
	if err := s.client.RemoveObject(ctx, s.bucket, name, minio.RemoveObjectOptions{}); err != nil {
		if err := s.fail(ctx, "delete", name, err); !errors.Is(err, model.ErrBlobNotFound) {
			return err
		}
	}
	return nil
}

// DeleteNamespace implements ports.BlobStore: it lists the namespace's
// objects, then deletes them one by one.
func (s *Store) DeleteNamespace(ctx context.Context, namespace string) error {
	if !ports.BlobNamespacePattern.MatchString(namespace) {
		return model.Invalid("namespace", "must match %s", ports.BlobNamespacePattern)
	}
	dir := s.prefix + namespace + "/"
	var names []string
	for obj := range s.client.ListObjectsIter(ctx, s.bucket, minio.ListObjectsOptions{Prefix: dir, Recursive: true}) {
		if obj.Err != nil {
			return s.fail(ctx, "list", dir, obj.Err)
		}
		names = append(names, obj.Key)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	for _, name := range names {
		if err := s.client.RemoveObject(ctx, s.bucket, name, minio.RemoveObjectOptions{}); err != nil {
			if err := s.fail(ctx, "delete", name, err); !errors.Is(err, model.ErrBlobNotFound) {
				return err
			}
		}
	}
	return nil
}

// ListBlobs implements ports.BlobStore: one listing of the prefix, in
// pages of 1000.
func (s *Store) ListBlobs(ctx context.Context, fn func(ports.BlobInfo) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for obj := range s.client.ListObjectsIter(ctx, s.bucket, minio.ListObjectsOptions{Prefix: s.prefix, Recursive: true}) {
		if obj.Err != nil {
			return s.fail(ctx, "list", s.prefix, obj.Err)
		}
		key, ok := ports.ParseBlobPath(strings.TrimPrefix(obj.Key, s.prefix))
		if !ok {
			continue
		}
		if err := fn(ports.BlobInfo{Key: key, Size: obj.Size, ETag: key.ETag()}); err != nil {
			return err
		}
	}
	return ctx.Err()
}

// Ping implements ports.BlobStore: the check New makes, each error the
// store's unavailability.
func (s *Store) Ping(ctx context.Context) error {
	if err := s.listOne(ctx); err != nil {
		if err := s.fail(ctx, "list", s.prefix, err); errors.Is(err, model.ErrUnavailable) || ctx.Err() != nil {
			return err
		}
		return &model.UnavailableError{Service: model.ServiceBlobStore, Err: fmt.Errorf("s3store: list %s in %s: %w", s.prefix, s.where, err)}
	}
	return nil
}
