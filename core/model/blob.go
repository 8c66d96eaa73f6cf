package model

import "fmt"

// ErrBlobNotFound means the blob store holds no blob under the key asked
// for. It matches ErrNotFound too, and stays distinguishable from a
// repository's "not found": a blob that the database records but the store
// does not hold is a failure of the store (503), not a missing entity (404).
var ErrBlobNotFound = fmt.Errorf("blob %w", ErrNotFound)

// ServiceBlobStore is the Service of an *UnavailableError from the blob
// store (a directory or an S3 bucket): like the database it is espmdm's own
// storage, so the HTTP API answers 503 rather than 502.
const ServiceBlobStore = "blobstore"
