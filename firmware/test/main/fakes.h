/* Fakes of the component's seams for the unit tests:
 *  - a store whose writes are lost at a simulated crash unless committed;
 *  - a server playing Keycloak (client-credentials grant, grace and restore rotation) and
 *    espmdm /iot (fetch, ack, config, firmware with ETag and Range, state, core dump);
 *  - a port with an in-memory OTA slot and rollback, and a system seam with a manual clock,
 *    recorded events and a step hook that "crashes" (longjmp) at a chosen step. */
#pragma once

#include <setjmp.h>
#include <stdbool.h>
#include <stdint.h>

#include "mdm.h"

/* ---------------------------------------------------------------- store */

#define FAKE_STORE_MAX 48
typedef struct {
    char ns[16], key[16];
    bool is_u32, erased;
    char str[MDM_TOKEN_MAX > 512 ? 512 : MDM_TOKEN_MAX];
    uint32_t u32;
} fake_kv_t;

typedef struct {
    fake_kv_t durable[FAKE_STORE_MAX];
    int n_durable;
    fake_kv_t pending[FAKE_STORE_MAX];
    int n_pending;
    esp_err_t open_err;     /* what open() answers */
    int commits;
} fake_store_t;

extern const mdm_store_ops_t fake_store_ops;
void fake_store_reset(fake_store_t *s);
/* Provisioning as espmdm writes it (committed). */
void fake_store_provision(fake_store_t *s, const char *secret);
/* A crash: every uncommitted write is lost. */
void fake_store_crash(fake_store_t *s);
/* The durable value of a string key ("" when absent). */
const char *fake_store_get(fake_store_t *s, const char *ns, const char *key);

/* ---------------------------------------------------------------- server */

#define FAKE_CLIENT_ID "iotdevice-sensor_v2-abcd1234"

typedef enum { FAKE_GRACE, FAKE_RESTORE } fake_mode_t;

typedef struct {
    fake_mode_t mode;
    char main[64], rotated[64], sealed[64], generated[64], completed_with[64];
    bool pending;           /* an attempt is in flight (nudged) */
    bool client_deleted;
    bool keycloak_down, espmdm_down;
    int generations;
    int tokens_issued;
    char token_secret[256][64]; /* token "tok-N" was issued for this secret */
    int token_requests, fetches, acks, acks_204, acks_409, configs, reports, dumps;
    char config[256];
    int state_status;       /* answer to POST /iot/state */
    int coredump_status;
    /* firmware */
    const uint8_t *fw;
    size_t fw_len;
    char fw_version[32];
    char fw_sha[65];
    bool version_has_sha;
    char etag_override[80];
    size_t cut_after;       /* the next download is cut after this many bytes (0: not) */
    char last_range[40], last_if_range[80];
    int downloads;
    char mqtt_password[64]; /* handed out by the fetch when set */
    size_t dump_received;
} fake_server_t;

void fake_server_reset(fake_server_t *s, fake_mode_t mode, const char *secret);
esp_err_t fake_http(void *ctx, const mdm_http_req_t *req, mdm_http_resp_t *resp);
/* The admin side: start an attempt (the nudge), time it out (restore gives the old secret
 * back), retry. */
void fake_server_trigger(fake_server_t *s);
void fake_server_timeout(fake_server_t *s);
/* Does Keycloak accept this secret now? */
bool fake_server_accepts(const fake_server_t *s, const char *secret);

/* ---------------------------------------------------------------- port */

typedef struct {
    uint8_t slot[512 * 1024];
    uint32_t slot_len, size, pos;
    bool writing;
    char running[32], installed[32], previous[32];
    int state;              /* 0 valid, 1 new, 2 pending_verify */
    int marked_valid;
    int reboots;
    uint8_t dump[2048];
    uint32_t dump_len;
} fake_port_t;

extern const mdm_port_ops_t fake_port_ops;
void fake_port_reset(fake_port_t *p, const char *version);
/* A reboot of the fake: the bootloader's rollback. */
void fake_port_boot(fake_port_t *p);

/* ---------------------------------------------------------------- the device under test */

#define FAKE_EVENTS_MAX 256
typedef struct {
    int32_t id;
    uint8_t data[512];
} fake_event_t;

typedef struct fake_device {
    mdm_t m;
    fake_store_t *store;
    fake_server_t *server;
    fake_port_t *port;
    int64_t now;
    uint32_t rnd;
    fake_event_t events[FAKE_EVENTS_MAX];
    int n_events;
    espmdm_step_t crash_at;  /* ESPMDM_STEP_COUNT: none */
    /* Called at every step before the crash check (a test changes the server there). */
    void (*on_step)(struct fake_device *d, espmdm_step_t step);
    jmp_buf crash;
    int crashes;
} fake_device_t;

/* A device on these fakes (the handle as espmdm_init would make it, with the fakes' seams). */
esp_err_t fake_device_init(fake_device_t *d, fake_store_t *st, fake_server_t *sv, fake_port_t *p);
void fake_device_free(fake_device_t *d);
int fake_device_count(const fake_device_t *d, int32_t id);
const void *fake_device_last(const fake_device_t *d, int32_t id);
/* Runs the due jobs until none is due now; advances the clock to each job's time up to
 * budget_ms. */
void fake_device_run(fake_device_t *d, int64_t budget_ms);
