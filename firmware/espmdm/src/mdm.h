/*
 * Internal header of the espmdm component: the handle, the seams (store, HTTP, port, system)
 * and the state machines' entry points. Everything here is shared by every platform and is
 * driven by the host unit tests (firmware/test) with fakes of the seams.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "esp_err.h"
#include "espmdm.h"
#include "port.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Field limits. A provisioning value longer than its buffer is refused, never cut. */
#define MDM_KEY_MAX 16
#define MDM_CLIENT_ID_MAX 96
#define MDM_CODE_MAX 64
#define MDM_SECRET_MAX 128
#define MDM_URL_MAX 256
#define MDM_TOKEN_MAX 4096
#define MDM_VERSION_MAX 32
#define MDM_SHA_HEX 65

/* NVS namespaces and keys (at most 15 characters). */
#define MDM_NS_PROV "prov"
#define MDM_NS_STATE "espmdm"
/* SPEC §4's slot client_secret_next: 18 characters do not fit an NVS key (15 at most), so the
 * slot is stored under this name. */
#define MDM_KEY_SECRET_NEXT "client_sec_next"

/* ---------------------------------------------------------------- the store seam (NVS) */

/* Key-value store over one NVS partition. Every set/erase is durable only after commit();
 * the fakes drop uncommitted writes at a simulated crash. */
typedef struct {
    esp_err_t (*open)(void *ctx);  /* (re)open the partition: ESP_OK, or why it cannot be read */
    void (*close)(void *ctx);
    /* ESP_ERR_NOT_FOUND when absent, ESP_ERR_INVALID_SIZE when longer than *len - 1. */
    esp_err_t (*get_str)(void *ctx, const char *ns, const char *key, char *out, size_t *len);
    esp_err_t (*set_str)(void *ctx, const char *ns, const char *key, const char *value);
    esp_err_t (*get_u32)(void *ctx, const char *ns, const char *key, uint32_t *out);
    esp_err_t (*set_u32)(void *ctx, const char *ns, const char *key, uint32_t value);
    esp_err_t (*erase)(void *ctx, const char *ns, const char *key); /* ESP_OK when absent too */
    esp_err_t (*commit)(void *ctx, const char *ns);
} mdm_store_ops_t;

/* The NVS implementation (store_nvs.c); ctx from mdm_store_nvs_new(label). */
extern const mdm_store_ops_t mdm_store_nvs_ops;
void *mdm_store_nvs_new(const char *partition_label);
void mdm_store_nvs_free(void *ctx);

/* ---------------------------------------------------------------- the HTTP seam */

/* Receives a response body piece by piece; an error stops the transfer. */
typedef esp_err_t (*mdm_http_sink_t)(void *ctx, const uint8_t *data, size_t len);
/* Produces a request body piece by piece into buf (up to cap); returns the bytes written,
 * 0 at the end, or a negative value on an error. */
typedef int (*mdm_http_source_t)(void *ctx, uint8_t *buf, size_t cap);

typedef struct {
    const char *method;         /* "GET", "POST" */
    const char *url;
    const char *bearer;         /* access token, or NULL */
    const char *content_type;   /* or NULL */
    const char *body;           /* request body, or NULL */
    size_t body_len;
    mdm_http_source_t source;   /* streamed request body of source_len bytes (body NULL) */
    void *source_ctx;
    size_t source_len;
    const char *range;          /* "bytes=N-", or NULL */
    const char *if_range;       /* quoted entity tag, or NULL */
    uint32_t timeout_ms;
    /* The response body goes into buf (at most cap - 1 bytes, NUL-terminated), or to sink. */
    char *buf;
    size_t cap;
    mdm_http_sink_t sink;
    void *sink_ctx;
} mdm_http_req_t;

typedef struct {
    int status;                 /* 0: no answer */
    size_t len;                 /* body bytes in buf (or passed to sink) */
    bool too_long;              /* the body did not fit in buf */
    int64_t content_length;     /* -1 when not sent */
    char etag[80];
    char content_range[64];
    uint32_t retry_after_s;
} mdm_http_resp_t;

/* ESP_OK when an answer came (whatever its status); else the transport's error (connect,
 * timeout, a sink error). */
typedef esp_err_t (*mdm_http_fn)(void *ctx, const mdm_http_req_t *req, mdm_http_resp_t *resp);

/* The esp_http_client implementation (http_esp.c). */
esp_err_t mdm_http_esp(void *ctx, const mdm_http_req_t *req, mdm_http_resp_t *resp);
typedef struct {
    const char *cert_pem;
    esp_err_t (*crt_bundle_attach)(void *conf);
} mdm_http_esp_ctx_t;

/* ---------------------------------------------------------------- system seam */

typedef struct {
    int64_t (*now_ms)(void *ctx);    /* monotonic */
    uint32_t (*random)(void *ctx);
    /* Post an event (data copied); never blocks for long. */
    void (*post)(void *ctx, int32_t id, const void *data, size_t size);
    /* Wait until every event posted before has been handled (bounded). */
    void (*drain)(void *ctx);
    void *ctx;
} mdm_sys_t;

/* ---------------------------------------------------------------- provisioning */

typedef struct {
    char device_key[MDM_KEY_MAX];
    char client_id[MDM_CLIENT_ID_MAX];
    char model_code[MDM_CODE_MAX];      /* from client_id: iotdevice-<code>-<key> */
    char secret[MDM_SECRET_MAX];        /* prov/client_secret */
    char secret_next[MDM_SECRET_MAX];   /* prov/client_secret_next, "" when empty */
    char token_url[MDM_URL_MAX];
    char base_url[MDM_URL_MAX];
    char mqtt_url[MDM_URL_MAX];
    char mqtt_password[MDM_SECRET_MAX]; /* "" when unset: connect without credentials */
    char wifi_ssid[33];
    char wifi_password[65];
} mdm_prov_t;

/* ---------------------------------------------------------------- jobs */

typedef enum {
    MDM_JOB_PROV,          /* read the provisioning partition */
    MDM_JOB_NETWORK,       /* bring the network up (port) */
    MDM_JOB_AUTH,          /* first token: the boot slot choice */
    MDM_JOB_ACK_PROMOTED,  /* ack a secret promoted at boot */
    MDM_JOB_ROTATION,      /* the rotation steps */
    MDM_JOB_CONFIG,        /* GET /iot/config (and the OTA check-in) */
    MDM_JOB_FIRMWARE,      /* firmware check, download, install */
    MDM_JOB_COREDUMP,      /* core dump upload */
    MDM_JOB_REPORT,        /* POST /iot/state */
    MDM_JOB_COUNT
} mdm_job_id_t;

typedef struct {
    bool pending;
    int64_t due_ms;
    uint32_t attempt;   /* failures in a row */
} mdm_job_t;

/* What a step or a job ends with. */
typedef enum {
    MDM_DONE,   /* finished (successfully or for good): nothing to retry */
    MDM_RETRY,  /* failed; try again after a backoff */
} mdm_res_t;

/* An error to report with the job's retry (filled by the failing step). */
typedef struct {
    espmdm_op_t op;
    esp_err_t err;
    int http_status;
    uint32_t retry_after_ms;  /* a server's Retry-After, 0 if none */
    char message[160];
} mdm_err_t;

/* OTA bookkeeping persisted in the namespace "espmdm". */
typedef struct {
    char version[MDM_VERSION_MAX]; /* target of the download in progress, "" if none */
    char sha[MDM_SHA_HEX];         /* expected SHA-256 (hex) when known */
    uint32_t offset;               /* bytes written and committed */
    uint32_t size;                 /* image size */
} mdm_ota_progress_t;

/* ---------------------------------------------------------------- the handle */

struct espmdm {
    /* configuration (strings copied) */
    char partition_label[17];
    char factory_version[MDM_VERSION_MAX];
    char state_dir[200];
    espmdm_config_t cfg;

    /* seams */
    const mdm_store_ops_t *store;
    void *store_ctx;
    mdm_http_fn http;
    void *http_ctx;
    const mdm_port_ops_t *port;
    void *port_ctx;
    mdm_sys_t sys;

    /* provisioning and auth */
    mdm_prov_t prov;
    bool prov_loaded;
    bool network_up;
    char token[MDM_TOKEN_MAX];
    espmdm_slot_t token_slot;
    int64_t token_renew_ms;   /* renew at or after this time */
    bool booted;              /* ESPMDM_EVENT_BOOT posted */

    /* the running image, as the port tells it at start */
    mdm_app_info_t app;
    bool ota_checked_in;      /* pending_verify image confirmed this run */
    char ota_target[MDM_VERSION_MAX];  /* last OTA attempt, for the report */
    char ota_result[16];

    /* jobs */
    mdm_job_t jobs[MDM_JOB_COUNT];
    int64_t started_ms;

    /* the rotation's new secret and its token, while the steps run (wiped after) */
    char rot_fetched[MDM_SECRET_MAX];
    char rot_token[MDM_TOKEN_MAX];

    /* buffers, allocated once by mdm_init_buffers() */
    char *body;               /* CONFIG_ESPMDM_BODY_MAX + 1 */
    char *tokbuf;             /* CONFIG_ESPMDM_TOKEN_RESPONSE_MAX + 1 */
    uint8_t *chunk;           /* MDM_CHUNK download/upload buffer */
    size_t body_cap, tokbuf_cap;

    /* platform task (espmdm.c) */
    void *task;
    void *events;             /* event group: nudges, requests, stop */
    void *mqtt;               /* mqtt adapter state */
    volatile bool stopping;
};
typedef struct espmdm mdm_t;

#define MDM_CHUNK 4096

/* Allocates the bounded buffers (every malloc checked). */
esp_err_t mdm_init_buffers(mdm_t *m, size_t body_cap, size_t tokbuf_cap);
void mdm_free_buffers(mdm_t *m);

/* ---------------------------------------------------------------- util.c */

/* Backoff before retry number attempt (1 = first retry): min * 2^(attempt-1), capped at max,
 * then drawn in [d/2, d] with rnd. Never 0, never above max. */
uint32_t mdm_backoff_ms(uint32_t attempt, uint32_t min_ms, uint32_t max_ms, uint32_t rnd);
/* Hex SHA-256 of data (out: 65 bytes). */
esp_err_t mdm_sha256_hex(const void *data, size_t len, char out[MDM_SHA_HEX]);
/* Incremental SHA-256. */
typedef struct mdm_sha256 mdm_sha256_t;
mdm_sha256_t *mdm_sha256_new(void);
esp_err_t mdm_sha256_update(mdm_sha256_t *h, const void *data, size_t len);
esp_err_t mdm_sha256_finish_hex(mdm_sha256_t *h, char out[MDM_SHA_HEX]);
void mdm_sha256_free(mdm_sha256_t *h);
/* Appends application/x-www-form-urlencoded value of s to out; false when it does not fit. */
bool mdm_form_append(char *out, size_t cap, const char *name, const char *value, bool first);
/* snprintf that reports truncation: false when the result did not fit. */
bool mdm_fmt(char *out, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* strlcpy that reports truncation. */
bool mdm_copy(char *dst, size_t cap, const char *src);
/* Wipes a buffer so a secret does not linger (not optimised away). */
void mdm_wipe(void *p, size_t n);
/* Model code of iotdevice-<code>-<key>; false when client_id is not of that form. */
bool mdm_model_code(const char *client_id, char *out, size_t cap);
/* Joins base_url and path ("/iot/config") into out. */
bool mdm_url(const mdm_t *m, const char *path, char *out, size_t cap);
/* Posts ESPMDM_EVENT_ERROR and logs it (the message never holds a secret). */
void mdm_post_error(mdm_t *m, const mdm_err_t *e, uint32_t attempt, uint32_t retry_in_ms);
/* Fills e; returns MDM_RETRY. */
mdm_res_t mdm_fail(mdm_err_t *e, espmdm_op_t op, esp_err_t err, int status, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
/* Calls the step hook. */
void mdm_step(mdm_t *m, espmdm_step_t step);
/* A hex SHA-256 (64 lowercase or uppercase hex digits)? */
bool mdm_is_sha_hex(const char *s);

/* ---------------------------------------------------------------- prov.c (the slots) */

/* Reads the partition: the required fields and both slots. */
mdm_res_t mdm_prov_load(mdm_t *m, mdm_err_t *e);
/* client_secret_next := secret; commit. */
esp_err_t mdm_prov_write_next(mdm_t *m, const char *secret);
/* Erases client_secret_next; commit. */
esp_err_t mdm_prov_erase_next(mdm_t *m);
/* client_secret := client_secret_next; erase next; commit. */
esp_err_t mdm_prov_promote(mdm_t *m);
/* mqtt_password := value; commit (no-op when equal). */
esp_err_t mdm_prov_set_mqtt_password(mdm_t *m, const char *value);

/* ---------------------------------------------------------------- token.c */

typedef enum {
    MDM_TOKEN_OK,
    MDM_TOKEN_REFUSED,      /* Keycloak answered 400/401: the secret is not accepted */
    MDM_TOKEN_UNAVAILABLE,  /* no answer, or 5xx/429: nothing learnt about the secret */
} mdm_token_res_t;

/* Client-credentials grant with secret. On OK the token is in out (cap bytes). */
mdm_token_res_t mdm_token_request(mdm_t *m, const char *secret, char *out, size_t cap,
                                  uint32_t *expires_in_s, mdm_err_t *e);
/* A valid token in m->token: the cached one, or the boot slot choice of SPEC §4 step 1
 * (current, else next and promote at once). */
mdm_res_t mdm_auth(mdm_t *m, mdm_err_t *e);
/* Forget the cached token (after a 401 from espmdm). */
void mdm_auth_forget(mdm_t *m);
/* Keeps a token just obtained with the given slot's secret. */
void mdm_auth_keep(mdm_t *m, const char *token, uint32_t expires_in_s, espmdm_slot_t slot);
/* An authenticated request to espmdm: auth, then the request; one retry with a fresh token
 * after a 401. req->bearer is set here. */
mdm_res_t mdm_iot(mdm_t *m, mdm_http_req_t *req, mdm_http_resp_t *resp, espmdm_op_t op, mdm_err_t *e);

/* ---------------------------------------------------------------- rotation.c (SPEC §4) */

/* The job: ack a secret promoted at boot (204 and 409 both end it). */
mdm_res_t mdm_ack_promoted(mdm_t *m, mdm_err_t *e);
/* The job: the rotation steps on the nudge. */
mdm_res_t mdm_rotation_run(mdm_t *m, mdm_err_t *e);
/* The steps (each commits before it returns). */
mdm_res_t mdm_rot_fetch(mdm_t *m, char *fetched, size_t cap, mdm_err_t *e);
mdm_res_t mdm_rot_write_next(mdm_t *m, const char *fetched, mdm_err_t *e);
mdm_res_t mdm_rot_token_next(mdm_t *m, char *tok, size_t cap, uint32_t *expires_in, bool *refused, mdm_err_t *e);
/* *outcome: 204 acked, 409 refused, else retry. */
mdm_res_t mdm_rot_ack(mdm_t *m, const char *tok, const char *secret, int *status, mdm_err_t *e);
mdm_res_t mdm_rot_promote(mdm_t *m, mdm_err_t *e);
mdm_res_t mdm_rot_discard_next(mdm_t *m, mdm_err_t *e);

/* ---------------------------------------------------------------- config (jobs.c) */

mdm_res_t mdm_config_run(mdm_t *m, mdm_err_t *e);

/* ---------------------------------------------------------------- ota.c */

/* At start: what the last run's OTA left (rollback, pending confirmation). */
void mdm_ota_boot(mdm_t *m);
/* After the running image checked in: confirm a pending_verify image. */
mdm_res_t mdm_ota_checked_in(mdm_t *m, mdm_err_t *e);
/* The job: check, download (resume), verify, install, reboot. */
mdm_res_t mdm_ota_run(mdm_t *m, mdm_err_t *e);
esp_err_t mdm_ota_progress_load(mdm_t *m, mdm_ota_progress_t *p);
esp_err_t mdm_ota_progress_save(mdm_t *m, const mdm_ota_progress_t *p);
esp_err_t mdm_ota_progress_clear(mdm_t *m);

/* ---------------------------------------------------------------- report.c, coredump.c */

/* The §15 body into out; false when it does not fit. */
bool mdm_report_body(mdm_t *m, char *out, size_t cap);
mdm_res_t mdm_report_run(mdm_t *m, mdm_err_t *e);
mdm_res_t mdm_coredump_run(mdm_t *m, mdm_err_t *e);

/* ---------------------------------------------------------------- jobs.c (the scheduler) */

/* Marks a job pending now (a nudge or a request resets its backoff). */
void mdm_job_now(mdm_t *m, mdm_job_id_t id);
void mdm_job_at(mdm_t *m, mdm_job_id_t id, int64_t due_ms);
/* Runs every due job once, in priority order; returns the time of the next due job
 * (INT64_MAX when none). */
int64_t mdm_jobs_run(mdm_t *m);
/* The device's topic filters: iotsupport/<client_id>/rotation, .../config, .../firmware (a
 * campaign's nudge to this device) and iotsupport/<model_code>/firmware (the model's release).
 * Four exact filters rather than iotsupport/<client_id>/#: a device without a broker account
 * (SPEC §19's grace) may subscribe to iotsupport/+/<kind> only, not to a wildcard of its own. */
#define MDM_TOPIC_COUNT 4
#define MDM_TOPIC_MAX 160
bool mdm_topics(const mdm_t *m, char topics[MDM_TOPIC_COUNT][MDM_TOPIC_MAX]);
/* What a topic asks for; false for a topic that is not the device's. */
bool mdm_topic_kind(const mdm_t *m, const char *topic, size_t len, espmdm_nudge_t *kind);
/* Marks the job a nudge asks for (in the component's task). */
void mdm_on_nudge(mdm_t *m, espmdm_nudge_t kind);
/* Posts ESPMDM_EVENT_NUDGE (any task). */
void mdm_post_nudge(mdm_t *m, espmdm_nudge_t kind, const char *topic, size_t len);

/* ---------------------------------------------------------------- mqtt.c */

esp_err_t mdm_mqtt_start(mdm_t *m);
void mdm_mqtt_stop(mdm_t *m);
/* A new MQTT password: used from the next connection on. */
void mdm_mqtt_password_changed(mdm_t *m);

#ifdef __cplusplus
}
#endif
