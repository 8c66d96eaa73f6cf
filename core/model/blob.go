package model

import (
	"fmt"
	"regexp"
)

// SHA256Pattern is a SHA-256 as espmdm names one everywhere (a firmware
// upload, an ELF, a core dump, a blob's key): 64 lower-case hex digits.
var SHA256Pattern = regexp.MustCompile(`^[0-9a-f]{64}$`)

// ErrBlobNotFound means the blob store holds no blob under the key asked
// for. It matches ErrNotFound too, and stays distinguishable from a
// repository's "not found": a blob that the database records but the store
// does not hold is a failure of the store (503), not a missing entity (404).
var ErrBlobNotFound = fmt.Errorf("blob %w", ErrNotFound)

// ServiceBlobStore is the Service of an *UnavailableError from the blob
// store (a directory or an S3 bucket): like the database it is espmdm's own
// storage, so the HTTP API answers 503 rather than 502.
const ServiceBlobStore = "blobstore"
