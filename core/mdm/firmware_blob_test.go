package mdm_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"testing"

	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/esp32image"
	"github.com/espmdm/espmdm/ports"
)

// storeDown is what a blob store that cannot be reached returns.
var storeDown = &model.UnavailableError{Service: model.ServiceBlobStore, Err: errors.New("connection refused")}

// The binary is a content-addressed blob (the model's code, the image's
// SHA-256), put in the store before the upload is recorded.
func TestUploadFirmwarePutsTheBlobBeforeRecording(t *testing.T) {
	e := newEnv(t)
	m := e.model(t, "lamp", "")
	data := image(esp32image.ChipESP32S3, "2.0.1")
	sum := sha256.Sum256(data)
	key := ports.BlobKey{Kind: ports.BlobFirmware, Namespace: "lamp", SHA256: hex.EncodeToString(sum[:])}
	recordedAtPut := -1
	e.fw.Hook = func(op string) error {
		if op == "PutBlob" {
			h, err := e.svc.ListFirmware(t.Context(), m.ID)
			if err != nil {
				return err
			}
			recordedAtPut = len(h)
		}
		return nil
	}
	if _, err := e.svc.UploadFirmware(t.Context(), m.ID, data, model.UploadOptions{}); err != nil {
		t.Fatal(err)
	}
	if recordedAtPut != 0 {
		t.Errorf("history had %d rows when the blob was put, want 0 (blob first)", recordedAtPut)
	}
	e.fw.Hook = nil
	info, err := e.fw.StatBlob(t.Context(), key)
	if err != nil || info.Size != int64(len(data)) {
		t.Errorf("blob %s: %+v, %v; want the image's %d bytes", key, info, err, len(data))
	}
}

// A store that is down refuses the upload with its unavailability (503),
// and nothing is recorded or announced.
func TestUploadFirmwareStoreDown(t *testing.T) {
	e := newEnv(t)
	m := e.model(t, "m", "")
	e.fw.Hook = func(op string) error {
		if op == "PutBlob" {
			return storeDown
		}
		return nil
	}
	_, err := e.svc.UploadFirmware(t.Context(), m.ID, image(esp32image.ChipESP32, "1"), model.UploadOptions{})
	var ue *model.UnavailableError
	if !errors.As(err, &ue) || ue.Service != model.ServiceBlobStore {
		t.Fatalf("upload with the store down: %v, want the blob store's *model.UnavailableError", err)
	}
	if h, _ := e.svc.ListFirmware(t.Context(), m.ID); len(h) != 0 {
		t.Errorf("history recorded: %v", h)
	}
	if got, _ := e.svc.GetModel(t.Context(), m.ID); got.FirmwareVersion != "" {
		t.Errorf("model FirmwareVersion %q, want none", got.FirmwareVersion)
	}
	if sent := e.notifier.Sent(); len(sent) != 0 {
		t.Errorf("notified: %v", sent)
	}
	if e.fw.Len() != 0 {
		t.Errorf("%d blobs stored", e.fw.Len())
	}
}

// A firmware the database records but the store does not hold is the
// store's failure (503), never "no firmware" (404): for the admin and for
// devices. Uploading the image again puts the blob back.
func TestRecordedFirmwareWithoutItsBlob(t *testing.T) {
	e := newEnv(t)
	m := e.model(t, "m", "")
	d := e.device(t, m, `{}`)
	data := image(esp32image.ChipESP32C3, "1.0.0")
	up, err := e.svc.UploadFirmware(t.Context(), m.ID, data, model.UploadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	key := ports.BlobKey{Kind: ports.BlobFirmware, Namespace: m.Code, SHA256: up.SHA256}
	if err := e.fw.DeleteBlob(t.Context(), key); err != nil {
		t.Fatal(err)
	}
	check := func(what string, err error) {
		t.Helper()
		var ue *model.UnavailableError
		if !errors.As(err, &ue) || ue.Service != model.ServiceBlobStore {
			t.Errorf("%s of a lost blob: %v, want the blob store's *model.UnavailableError", what, err)
		}
		if errors.Is(err, model.ErrNotFound) {
			t.Errorf("%s of a lost blob matches ErrNotFound (a 404): %v", what, err)
		}
		if err != nil && !bytes.Contains([]byte(err.Error()), []byte(key.Path())) {
			t.Errorf("%s: %q does not name the blob %s", what, err, key)
		}
	}
	_, _, err = e.svc.OpenFirmware(t.Context(), m.ID)
	check("OpenFirmware", err)
	_, _, err = e.svc.DeviceFirmware(t.Context(), d)
	check("DeviceFirmware", err)

	again, err := e.svc.UploadFirmware(t.Context(), m.ID, data, model.UploadOptions{})
	if err != nil || !again.Unchanged {
		t.Fatalf("re-upload: %+v, %v; want Unchanged", again, err)
	}
	_, b, err := e.svc.DeviceFirmware(t.Context(), d)
	if err != nil {
		t.Fatalf("DeviceFirmware after the re-upload: %v", err)
	}
	got, _ := io.ReadAll(b)
	b.Close()
	if !bytes.Equal(got, data) {
		t.Errorf("after the re-upload: %d bytes, want the image's %d", len(got), len(data))
	}
	if h, _ := e.svc.ListFirmware(t.Context(), m.ID); len(h) != 1 {
		t.Errorf("history after the re-upload: %d rows, want 1", len(h))
	}
}

// A store that is down when a binary is opened is its unavailability,
// passed on as it is.
func TestOpenFirmwareStoreDown(t *testing.T) {
	e := newEnv(t)
	m := e.model(t, "m", "")
	d := e.device(t, m, `{}`)
	if _, err := e.svc.UploadFirmware(t.Context(), m.ID, image(esp32image.ChipESP32, "1"), model.UploadOptions{}); err != nil {
		t.Fatal(err)
	}
	e.fw.Hook = func(op string) error {
		if op == "OpenBlob" {
			return fmt.Errorf("open: %w", storeDown)
		}
		return nil
	}
	for what, open := range map[string]func() error{
		"OpenFirmware":   func() error { _, _, err := e.svc.OpenFirmware(t.Context(), m.ID); return err },
		"DeviceFirmware": func() error { _, _, err := e.svc.DeviceFirmware(t.Context(), d); return err },
	} {
		if err := open(); !errors.Is(err, storeDown) {
			t.Errorf("%s with the store down: %v, want the store's error", what, err)
		}
	}
}

// Deleting a model deletes the blob namespace of its code, the ELFs and
// core dumps filed under it included.
func TestDeleteModelDeletesItsBlobNamespace(t *testing.T) {
	e := newEnv(t)
	m, other := e.model(t, "gone", ""), e.model(t, "kept", "")
	for _, code := range []string{m.Code, other.Code} {
		data := []byte("an ELF of " + code)
		sum := sha256.Sum256(data)
		key := ports.BlobKey{Kind: ports.BlobELF, Namespace: code, SHA256: hex.EncodeToString(sum[:])}
		if _, err := e.fw.PutBlob(t.Context(), key, bytes.NewReader(data), int64(len(data)), 0); err != nil {
			t.Fatal(err)
		}
	}
	if err := e.svc.DeleteModel(t.Context(), m.ID); err != nil {
		t.Fatal(err)
	}
	var left []string
	_ = e.fw.ListBlobs(t.Context(), func(i ports.BlobInfo) error { left = append(left, i.Key.Namespace); return nil })
	if len(left) != 1 || left[0] != "kept" {
		t.Errorf("blobs left in namespaces %v, want only kept's", left)
	}
}
