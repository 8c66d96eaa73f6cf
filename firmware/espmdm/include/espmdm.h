/*
 * espmdm — the device side of espmdm (https://github.com/espmdm/espmdm), as an ESP-IDF component.
 *
 * What it does, once started, in a task of its own:
 *  - reads the provisioning partition espmdm made (NVS namespace "prov") and keeps the two
 *    secret slots of the rotation protocol in it (client_secret, client_secret_next);
 *  - gets access tokens from Keycloak (client-credentials grant at token_url), cached and
 *    renewed before they expire;
 *  - connects to mqtt_url with client_id as MQTT client id, subscribes to the device's
 *    topics (its rotation, config and firmware nudges, and its model's firmware topic) and
 *    re-subscribes after every reconnect;
 *  - fetches the device's config (GET /iot/config) at start and on the config nudge and hands
 *    it to the application (ESPMDM_EVENT_CONFIG);
 *  - runs the credential rotation on the rotation nudge, crash-safe at every step;
 *  - checks the firmware at start and on the firmware nudge, downloads it with Range resume,
 *    verifies its SHA-256, installs it through the platform's OTA port and reboots; the new
 *    image is confirmed (rollback cancelled) only after it has checked in;
 *  - reports the device's state (POST /iot/state) at start, after an OTA and periodically;
 *  - uploads a core dump a crash left (POST /iot/coredump) and erases it after the 201.
 *
 * Every failure (a corrupt partition, Keycloak refusing both secrets, espmdm unreachable) is an
 * ESPMDM_EVENT_ERROR and a retry with exponential backoff (bounded, jittered). No secret, token
 * or password appears in a log line or an event, at any log level.
 *
 * Threading: espmdm_init() and espmdm_start() return at once; all network work happens in the
 * component's task. espmdm_stop() blocks the caller until that task has finished the step it
 * is in (at most about one network timeout). Events are posted to an esp_event loop (the default
 * one unless espmdm_config_t.event_loop names another), so handlers run in that loop's task.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "esp_err.h"
#include "esp_event.h"
#include "sdkconfig.h"

#ifdef __cplusplus
extern "C" {
#endif

/** The component's version (idf_component.yml). */
#define ESPMDM_VERSION "0.1.0"

/** Base of every event the component posts. Register with
 *  esp_event_handler_instance_register(ESPMDM_EVENT, ESP_EVENT_ANY_ID, handler, arg, &inst). */
ESP_EVENT_DECLARE_BASE(ESPMDM_EVENT);

/** The events. The event data type is named after each; data is copied by esp_event and is
 *  only valid during the handler call. */
typedef enum {
    ESPMDM_EVENT_BOOT,              /*!< first token of this run succeeded: espmdm_event_boot_t */
    ESPMDM_EVENT_TOKEN,             /*!< a token was obtained: espmdm_event_token_t */
    ESPMDM_EVENT_SUBSCRIBED,        /*!< MQTT subscriptions in place (after each connect): espmdm_event_subscribed_t */
    ESPMDM_EVENT_CONFIG,            /*!< the device's config: espmdm_event_config_t (JSON text) */
    ESPMDM_EVENT_NUDGE,             /*!< an MQTT nudge arrived: espmdm_event_nudge_t */
    ESPMDM_EVENT_ROTATION_FETCHED,  /*!< the rotation fetch answered: espmdm_event_rotation_t */
    ESPMDM_EVENT_ROTATION_ACKED,    /*!< the ack answered 204: espmdm_event_rotation_t */
    ESPMDM_EVENT_PROMOTED,          /*!< client_secret := client_secret_next committed: espmdm_event_rotation_t */
    ESPMDM_EVENT_OTA_STARTED,       /*!< a firmware download began or resumed: espmdm_event_ota_t */
    ESPMDM_EVENT_OTA_INSTALLED,     /*!< the image is verified and set to boot next: espmdm_event_ota_t */
    ESPMDM_EVENT_OTA_CONFIRMED,     /*!< the new image checked in and was marked valid: espmdm_event_ota_t */
    ESPMDM_EVENT_OTA_ROLLED_BACK,   /*!< the bootloader went back to the previous image: espmdm_event_ota_t */
    ESPMDM_EVENT_OTA_FAILED,        /*!< a download or verification failed for good: espmdm_event_ota_t */
    ESPMDM_EVENT_STATE_REPORTED,    /*!< POST /iot/state answered 204: no data */
    ESPMDM_EVENT_COREDUMP_UPLOADED, /*!< a core dump was uploaded and erased: espmdm_event_coredump_t */
    ESPMDM_EVENT_REBOOTING,         /*!< the component is about to restart the device: espmdm_event_reboot_t */
    ESPMDM_EVENT_ERROR,             /*!< something failed and will be retried: espmdm_event_error_t */
    ESPMDM_EVENT_CONNECTED,         /*!< the MQTT connection is up, subscriptions not yet acknowledged: espmdm_event_connected_t */
} espmdm_event_id_t;

/** The secret slot a token was obtained with. */
typedef enum {
    ESPMDM_SLOT_CURRENT, /*!< prov/client_secret */
    ESPMDM_SLOT_NEXT,    /*!< prov/client_secret_next (promoted at once when it is the one that works) */
} espmdm_slot_t;

/** The running image's OTA state (as the bootloader's rollback sees it). */
typedef enum {
    ESPMDM_OTA_STATE_VALID,          /*!< confirmed, or rollback not in use */
    ESPMDM_OTA_STATE_PENDING_VERIFY, /*!< first boot of a new image, not yet confirmed */
} espmdm_ota_state_t;

/** What an operation that failed was doing (espmdm_event_error_t.op). */
typedef enum {
    ESPMDM_OP_PROVISIONING, /*!< reading the provisioning partition */
    ESPMDM_OP_TOKEN,        /*!< getting a token from Keycloak */
    ESPMDM_OP_CONFIG,       /*!< GET /iot/config */
    ESPMDM_OP_ROTATION,     /*!< a rotation step (fetch, token with the new secret, ack, promote) */
    ESPMDM_OP_FIRMWARE,     /*!< firmware check, download, verification or installation */
    ESPMDM_OP_STATE,        /*!< POST /iot/state */
    ESPMDM_OP_COREDUMP,     /*!< POST /iot/coredump */
    ESPMDM_OP_MQTT,         /*!< the MQTT connection */
    ESPMDM_OP_NETWORK,      /*!< bringing the network up (the platform port) */
} espmdm_op_t;

/** Named steps of the rotation and the OTA, where espmdm_config_t.step_hook is called. */
typedef enum {
    ESPMDM_STEP_AFTER_FETCH,        /*!< the rotation fetch answered; nothing written yet */
    ESPMDM_STEP_AFTER_WRITE_NEXT,   /*!< the new secret is committed to client_secret_next */
    ESPMDM_STEP_AFTER_TOKEN_NEXT,   /*!< Keycloak gave a token for the new secret */
    ESPMDM_STEP_AFTER_ACK,          /*!< the ack answered 204; the promotion is not committed yet */
    ESPMDM_STEP_AFTER_PROMOTE,      /*!< the promotion is committed */
    ESPMDM_STEP_BOOT_AFTER_PROMOTE, /*!< at boot only next worked: promoted, its ack not sent yet */
    ESPMDM_STEP_OTA_MID_DOWNLOAD,   /*!< half the image is written and its progress committed */
    ESPMDM_STEP_OTA_AFTER_VERIFY,   /*!< the whole image is written and its SHA-256 verified */
    ESPMDM_STEP_OTA_BEFORE_REBOOT,  /*!< the new image is set to boot; the reboot comes next */
    ESPMDM_STEP_OTA_BEFORE_CONFIRM, /*!< the new image checked in; it is not marked valid yet */
    ESPMDM_STEP_COUNT
} espmdm_step_t;

/** Data of ESPMDM_EVENT_BOOT. */
typedef struct {
    espmdm_slot_t slot;              /*!< the slot whose secret Keycloak accepted */
    espmdm_ota_state_t ota_state;    /*!< of the running image */
    char firmware_version[32];       /*!< of the running image */
    char partition[17];              /*!< label of the running app partition */
    char client_id[96];
} espmdm_event_boot_t;

/** Data of ESPMDM_EVENT_TOKEN. */
typedef struct {
    espmdm_slot_t slot;
    uint32_t expires_in_s; /*!< the token's lifetime as Keycloak gave it */
} espmdm_event_token_t;

/** Data of ESPMDM_EVENT_CONNECTED (after each connect, before the subscriptions are acknowledged). */
typedef struct {
    bool session_present; /*!< the broker kept this client's session (MQTT 3.1.1 CONNACK flag) */
} espmdm_event_connected_t;

/** Data of ESPMDM_EVENT_SUBSCRIBED: every filter acknowledged. The filters are
 *  iotsupport/<client_id>/rotation, iotsupport/<client_id>/config, iotsupport/<client_id>/firmware
 *  (a firmware campaign's nudge to this device) and iotsupport/<model_code>/firmware (the model's
 *  release). A filter the broker refuses is an ESPMDM_EVENT_ERROR, and then no SUBSCRIBED comes. */
typedef struct {
    uint8_t topics; /*!< how many topic filters are in place (4) */
} espmdm_event_subscribed_t;

/** Data of ESPMDM_EVENT_CONFIG: the config object exactly as espmdm sent it (valid JSON,
 *  NUL-terminated, at most CONFIG_ESPMDM_BODY_MAX bytes). */
typedef struct {
    size_t len;
    char json[];
} espmdm_event_config_t;

/** What a nudge asks for. */
typedef enum {
    ESPMDM_NUDGE_ROTATION, /*!< iotsupport/<client_id>/rotation */
    ESPMDM_NUDGE_CONFIG,   /*!< iotsupport/<client_id>/config */
    ESPMDM_NUDGE_FIRMWARE, /*!< iotsupport/<client_id>/firmware or iotsupport/<model_code>/firmware:
                                check the effective firmware (GET /iot/firmware-version) */
} espmdm_nudge_t;

/** Data of ESPMDM_EVENT_NUDGE. */
typedef struct {
    espmdm_nudge_t kind;
    char topic[160];
} espmdm_event_nudge_t;

/** Data of the rotation events. */
typedef struct {
    bool changed;   /*!< ROTATION_FETCHED: the fetch handed out a secret the device does not run on yet */
    bool at_boot;   /*!< PROMOTED: promoted at boot (only next worked) rather than after an ack */
    int http_status; /*!< ROTATION_ACKED: the ack's status (204) */
} espmdm_event_rotation_t;

/** Data of the OTA events. */
typedef struct {
    char version[32];    /*!< the target version */
    uint32_t offset;     /*!< OTA_STARTED: where the download (re)starts; > 0 for a resumed one */
    uint32_t size;       /*!< image size when known, else 0 */
    char result[16];     /*!< OTA_FAILED: "download_failed" or "verify_failed" */
} espmdm_event_ota_t;

/** Data of ESPMDM_EVENT_COREDUMP_UPLOADED. */
typedef struct {
    char id[40];     /*!< the id espmdm gave the dump */
    uint32_t size;
} espmdm_event_coredump_t;

/** Data of ESPMDM_EVENT_REBOOTING. */
typedef struct {
    char reason[16]; /*!< "ota" */
} espmdm_event_reboot_t;

/** Data of ESPMDM_EVENT_ERROR. message never holds a secret, a token or a password. */
typedef struct {
    espmdm_op_t op;
    esp_err_t err;        /*!< ESP_FAIL for an answer the server refused, else the transport's error */
    int http_status;      /*!< 0 when no answer came */
    uint32_t attempt;     /*!< 1 for the first failure of this operation in a row */
    uint32_t retry_in_ms; /*!< when the operation is tried again (0: on the next nudge only) */
    char message[160];
} espmdm_event_error_t;

/** Called in the component's task when a named step is reached. For fault-injection tests
 *  (the host device's --crash-at exits here); leave it NULL in production firmware. */
typedef void (*espmdm_step_hook_t)(espmdm_step_t step, void *arg);

/** Configuration. Start from ESPMDM_DEFAULT_CONFIG(); strings are copied by espmdm_init()
 *  except cert_pem, which must outlive the handle. */
typedef struct {
    const char *partition_label;     /*!< the provisioning partition (NVS, namespace "prov") */
    esp_event_loop_handle_t event_loop; /*!< NULL: the default loop (create it first) */
    const char *cert_pem;            /*!< CA for https:// and mqtts:// (NULL: none, or the bundle) */
    esp_err_t (*crt_bundle_attach)(void *conf); /*!< e.g. esp_crt_bundle_attach; NULL: none */
    uint32_t http_timeout_ms;        /*!< every HTTP request, connect to last byte of a body read */
    uint32_t backoff_min_ms;         /*!< first retry delay; doubles up to backoff_max_ms, jittered */
    uint32_t backoff_max_ms;
    uint32_t report_interval_s;      /*!< periodic state report; 0: only at start and after an OTA */
    bool ota_enabled;                /*!< check, download and install firmware */
    bool ota_reboot;                 /*!< reboot into a new image at once (else the application does) */
    bool coredump_upload;            /*!< upload a core dump left by a crash */
    bool manage_network;             /*!< bring Wi-Fi up with prov/wifi_ssid (ESP32 port; no-op on linux) */
    uint32_t task_stack_size;
    uint32_t task_priority;
    const char *factory_version;     /*!< linux port: the version of the image that runs before any OTA */
    const char *state_dir;           /*!< linux port: directory for the OTA slots and core dumps */
    espmdm_step_hook_t step_hook;    /*!< test hook, see espmdm_step_hook_t */
    void *step_hook_arg;
} espmdm_config_t;

/** The defaults, from Kconfig. */
#define ESPMDM_DEFAULT_CONFIG() {                                  \
    .partition_label = CONFIG_ESPMDM_PARTITION_LABEL,              \
    .event_loop = NULL,                                            \
    .cert_pem = NULL,                                              \
    .crt_bundle_attach = NULL,                                     \
    .http_timeout_ms = CONFIG_ESPMDM_HTTP_TIMEOUT_MS,              \
    .backoff_min_ms = CONFIG_ESPMDM_BACKOFF_MIN_MS,                \
    .backoff_max_ms = CONFIG_ESPMDM_BACKOFF_MAX_MS,                \
    .report_interval_s = CONFIG_ESPMDM_REPORT_INTERVAL_S,          \
    .ota_enabled = ESPMDM_DEFAULT_OTA,                             \
    .ota_reboot = true,                                            \
    .coredump_upload = ESPMDM_DEFAULT_COREDUMP,                    \
    .manage_network = ESPMDM_DEFAULT_MANAGE_WIFI,                  \
    .task_stack_size = CONFIG_ESPMDM_TASK_STACK_SIZE,              \
    .task_priority = CONFIG_ESPMDM_TASK_PRIORITY,                  \
    .factory_version = NULL,                                       \
    .state_dir = NULL,                                             \
    .step_hook = NULL,                                             \
    .step_hook_arg = NULL,                                         \
}

/** @cond internal: Kconfig bools (undefined when off) as true/false. */
#ifdef CONFIG_ESPMDM_OTA
#define ESPMDM_DEFAULT_OTA true
#else
#define ESPMDM_DEFAULT_OTA false
#endif
#ifdef CONFIG_ESPMDM_COREDUMP_UPLOAD
#define ESPMDM_DEFAULT_COREDUMP true
#else
#define ESPMDM_DEFAULT_COREDUMP false
#endif
#ifdef CONFIG_ESPMDM_MANAGE_WIFI
#define ESPMDM_DEFAULT_MANAGE_WIFI true
#else
#define ESPMDM_DEFAULT_MANAGE_WIFI false
#endif
/** @endcond */

/** Opaque handle. */
typedef struct espmdm *espmdm_handle_t;

/** What espmdm_request() asks for. */
typedef enum {
    ESPMDM_REQUEST_CONFIG,   /*!< fetch the config now */
    ESPMDM_REQUEST_FIRMWARE, /*!< check the firmware now */
    ESPMDM_REQUEST_STATE,    /*!< report the state now */
    ESPMDM_REQUEST_ROTATION, /*!< run the rotation fetch now (as the nudge does) */
} espmdm_request_t;

/**
 * Allocates a handle and initialises the platform port (on linux: the OTA slots in state_dir).
 * Does no network and no flash I/O on the provisioning partition. Does not block.
 * @return ESP_OK, ESP_ERR_INVALID_ARG (a NULL or out-of-range value), ESP_ERR_NO_MEM.
 */
esp_err_t espmdm_init(const espmdm_config_t *config, espmdm_handle_t *out_handle);

/**
 * Starts the component's task. Returns at once; progress and failures arrive as events.
 * @return ESP_OK, ESP_ERR_INVALID_STATE (already started), ESP_ERR_NO_MEM.
 */
esp_err_t espmdm_start(espmdm_handle_t handle);

/**
 * Asks the task to do something now (as a nudge would). Does not block.
 * @return ESP_OK, ESP_ERR_INVALID_ARG, ESP_ERR_INVALID_STATE (not started).
 */
esp_err_t espmdm_request(espmdm_handle_t handle, espmdm_request_t what);

/**
 * Stops the task and the MQTT client. BLOCKS the caller until the task has finished the step
 * it is in: at most about http_timeout_ms plus a second. Every step commits before it returns,
 * so stopping (or losing power) at any point is safe.
 * @return ESP_OK, ESP_ERR_INVALID_STATE (not started), ESP_ERR_TIMEOUT.
 */
esp_err_t espmdm_stop(espmdm_handle_t handle);

/** Frees the handle (stop it first). @return ESP_OK, ESP_ERR_INVALID_STATE (still running). */
esp_err_t espmdm_deinit(espmdm_handle_t handle);

/** The device's client_id once the provisioning partition was read, else "".
 *  Copies at most len bytes (NUL-terminated). @return ESP_OK, ESP_ERR_INVALID_STATE, ESP_ERR_INVALID_SIZE. */
esp_err_t espmdm_get_client_id(espmdm_handle_t handle, char *buf, size_t len);

/** "after_fetch", "after_write_next", ... (the names the host device's --crash-at takes). */
const char *espmdm_step_name(espmdm_step_t step);

/** The step of a name; ESP_ERR_NOT_FOUND for an unknown one. */
esp_err_t espmdm_step_from_name(const char *name, espmdm_step_t *out);

/** "boot", "token", "subscribed", "config", ... (the host device's JSON "event" field). */
const char *espmdm_event_name(int32_t event_id);

/** "provisioning", "token", ... */
const char *espmdm_op_name(espmdm_op_t op);

#ifdef __cplusplus
}
#endif
