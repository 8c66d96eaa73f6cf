package ports

import (
	"context"
	"io"
	"regexp"
	"strings"

	"github.com/espmdm/espmdm/core/model"
)

// BlobKind is the family of a blob. Firmware binaries, ELFs and core dumps
// share one store; the kind keeps a firmware image and an ELF with the
// same digest apart and gives each stored name its extension.
type BlobKind string

// The kinds of blob.
const (
	BlobFirmware BlobKind = "firmware" // an ESP32 application image
	BlobELF      BlobKind = "elf"      // an application's ELF, for core dump analysis
	BlobCoreDump BlobKind = "coredump" // a device's core dump
)

// blobExt is each kind's extension in a stored name. Firmware keeps the
// ".bin" that FIRMWARE_DIR has always used, so existing directories are
// blob stores as they are.
var blobExt = map[BlobKind]string{BlobFirmware: ".bin", BlobELF: ".elf", BlobCoreDump: ".core"}

// BlobNamespacePattern is what a blob namespace must match (a device
// model code does).
var BlobNamespacePattern = regexp.MustCompile(`^[a-z0-9_]{1,50}$`)

// BlobKey addresses a blob. Blobs are content-addressed: the key holds
// the content's SHA-256, and a store refuses content that does not hash
// to it.
type BlobKey struct {
	Kind BlobKind
	// Namespace groups the blobs that are deleted together: the device
	// model's code for firmware and ELFs. It matches BlobNamespacePattern.
	Namespace string
	// SHA256 is the content's SHA-256 as 64 lower-case hex digits.
	SHA256 string
}

// Validate returns a *model.ValidationError when the key cannot address a
// blob. Stores check every key before they use it.
func (k BlobKey) Validate() error {
	if _, ok := blobExt[k.Kind]; !ok {
		return model.Invalid("kind", "must be one of firmware, elf, coredump")
	}
	if !BlobNamespacePattern.MatchString(k.Namespace) {
		return model.Invalid("namespace", "must match %s", BlobNamespacePattern)
	}
	if !model.SHA256Pattern.MatchString(k.SHA256) {
		return model.Invalid("sha256", "must be 64 lower-case hex digits")
	}
	return nil
}

// Path is the blob's name in every store, relative to the store's
// directory or bucket prefix: "<namespace>/<sha256>.bin" (".elf",
// ".core"). The key must be valid.
func (k BlobKey) Path() string { return k.Namespace + "/" + k.SHA256 + blobExt[k.Kind] }

// String is the key's Path.
func (k BlobKey) String() string { return k.Path() }

// ETag is the blob's HTTP entity tag: its quoted SHA-256, the same in
// every store (an S3 store's own ETag depends on how the object was
// uploaded, and would change when a blob is migrated).
func (k BlobKey) ETag() string { return `"` + k.SHA256 + `"` }

// ParseBlobPath is the key whose Path is p; ok is false for any other
// name (temporary files, directory markers, foreign objects).
func ParseBlobPath(p string) (key BlobKey, ok bool) {
	ns, file, found := strings.Cut(p, "/")
	if !found {
		return BlobKey{}, false
	}
	digest, ext, found := strings.Cut(file, ".")
	if !found {
		return BlobKey{}, false
	}
	for kind, e := range blobExt {
		if e == "."+ext {
			key = BlobKey{Kind: kind, Namespace: ns, SHA256: digest}
			return key, key.Validate() == nil
		}
	}
	return BlobKey{}, false
}

// BlobInfo describes a stored blob.
type BlobInfo struct {
	Key  BlobKey
	Size int64
	// ETag is Key.ETag().
	ETag string
}

// UnknownSize is the size argument of BlobStore.PutBlob for a stream whose
// length is not known in advance.
const UnknownSize int64 = -1

// BlobStore keeps content-addressed blobs (firmware binaries, ELFs, core
// dumps) in a directory or an object store that every replica reaches.
// Implementations are safe for concurrent use. Errors: a key that does not
// validate is a *model.ValidationError; a blob that is not stored is
// model.ErrBlobNotFound; a store that cannot be reached or fails is a
// *model.UnavailableError with Service model.ServiceBlobStore.
type BlobStore interface {
	// PutBlob stores what r yields, to its EOF, under key. size is the
	// content's length, or UnknownSize; limit, when positive, is the most
	// bytes accepted. The content is checked while it streams, before
	// anything becomes visible: more than limit bytes is model.ErrTooLarge
	// (a known size above it is refused before reading), a digest other
	// than key.SHA256 or more bytes than size a *model.ValidationError,
	// fewer bytes than size io.ErrUnexpectedEOF, and an error of r or of
	// ctx is returned wrapped. A PutBlob that fails leaves nothing visible:
	// the key holds what it held before. Putting a stored blob again, or
	// the same blob from several callers at once, succeeds.
	PutBlob(ctx context.Context, key BlobKey, r io.Reader, size, limit int64) (BlobInfo, error)
	// StatBlob describes the stored blob.
	StatBlob(ctx context.Context, key BlobKey) (BlobInfo, error)
	// OpenBlob opens the stored blob for reading from any offset (Seek,
	// then Read): a ranged download is served from it without holding the
	// content in memory. Reads after OpenBlob returns are not bound to
	// ctx; the caller closes the blob, which ends them.
	OpenBlob(ctx context.Context, key BlobKey) (Blob, error)
	// DeleteBlob removes the blob; a blob that is not stored is no error.
	DeleteBlob(ctx context.Context, key BlobKey) error
	// DeleteNamespace removes every blob of the namespace (its model was
	// deleted); an empty namespace is no error.
	DeleteNamespace(ctx context.Context, namespace string) error
	// ListBlobs calls fn for every stored blob, in no particular order,
	// until fn returns an error, which ListBlobs returns. Names that are
	// no blob's Path (temporary files, foreign objects) are skipped.
	ListBlobs(ctx context.Context, fn func(BlobInfo) error) error
	// Ping checks that the store answers, for readiness.
	Ping(ctx context.Context) error
}
