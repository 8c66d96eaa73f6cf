package mqtt

import (
	"encoding/json"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/espmdm/espmdm/core/model"
)

// TopicPrefix is the first level of every notification topic.
const TopicPrefix = "iotsupport"

// maxSegment bounds one topic level (MQTT allows 65535 bytes for the whole
// topic; client ids and model codes are far shorter).
const maxSegment = 1024

// RotationTopic is iotsupport/<clientID>/rotation.
func RotationTopic(clientID string) (string, error) {
	if err := checkSegment("client_id", clientID); err != nil {
		return "", err
	}
	return TopicPrefix + "/" + clientID + "/rotation", nil
}

// ConfigTopic is iotsupport/<clientID>/config.
func ConfigTopic(clientID string) (string, error) {
	if err := checkSegment("client_id", clientID); err != nil {
		return "", err
	}
	return TopicPrefix + "/" + clientID + "/config", nil
}

// FirmwareTopic is iotsupport/<modelCode>/firmware.
func FirmwareTopic(modelCode string) (string, error) {
	if err := checkSegment("model_code", modelCode); err != nil {
		return "", err
	}
	return TopicPrefix + "/" + modelCode + "/firmware", nil
}

// DeviceFirmwareTopic is iotsupport/<clientID>/firmware: one device's
// firmware assignment (SPEC §16). A device account may subscribe to
// iotsupport/<client_id>/#, which covers it.
func DeviceFirmwareTopic(clientID string) (string, error) {
	if err := checkSegment("client_id", clientID); err != nil {
		return "", err
	}
	return TopicPrefix + "/" + clientID + "/firmware", nil
}

// assignedMessage is the JSON body of a firmware assignment.
type assignedMessage struct {
	FirmwareVersion string `json:"firmware_version"`
	SHA256          string `json:"sha256"`
}

// AssignedPayload is a firmware assignment's body,
// {"firmware_version":"<version>","sha256":"<hex>"}.
func AssignedPayload(version, sha256 string) ([]byte, error) {
	if _, err := FirmwarePayload(version); err != nil {
		return nil, err
	}
	return json.Marshal(assignedMessage{FirmwareVersion: version, SHA256: sha256})
}

// firmwareMessage is the JSON body of a firmware notification.
type firmwareMessage struct {
	FirmwareVersion string `json:"firmware_version"`
}

// FirmwarePayload is the firmware notification's body,
// {"firmware_version":"<version>"}. The version must be non-empty UTF-8.
func FirmwarePayload(version string) ([]byte, error) {
	if version == "" {
		return nil, model.Invalid("firmware_version", "must not be empty")
	}
	if !utf8.ValidString(version) {
		return nil, model.Invalid("firmware_version", "must be valid UTF-8")
	}
	return json.Marshal(firmwareMessage{FirmwareVersion: version})
}

// checkSegment rejects what cannot be one level of a topic name: the
// wildcards + and #, the level separator /, NUL and other control
// characters, invalid UTF-8, the empty string and absurd lengths. The
// errors are *model.ValidationError.
func checkSegment(field, s string) error {
	switch {
	case s == "":
		return model.Invalid(field, "must not be empty (it is an MQTT topic level)")
	case len(s) > maxSegment:
		return model.Invalid(field, "is %d bytes long; an MQTT topic level here is at most %d", len(s), maxSegment)
	case !utf8.ValidString(s):
		return model.Invalid(field, "must be valid UTF-8 (it is an MQTT topic level)")
	case strings.ContainsAny(s, "+#/"):
		return model.Invalid(field, "%q must not contain '+', '#' or '/' (MQTT topic wildcards and level separator)", s)
	case strings.IndexFunc(s, unicode.IsControl) >= 0:
		return model.Invalid(field, "%q must not contain NUL or other control characters (MQTT topic level)", s)
	}
	return nil
}
