/* Small helpers shared by the state machines: backoff, SHA-256, bounded string building. */
#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "esp_log.h"
#include "mbedtls/build_info.h"
#if MBEDTLS_VERSION_MAJOR >= 4
#include "psa/crypto.h"
#else
#include "mbedtls/sha256.h"
#endif

#include "mdm.h"

static const char *TAG = "espmdm";

esp_err_t mdm_init_buffers(mdm_t *m, size_t body_cap, size_t tokbuf_cap)
{
    m->body = malloc(body_cap + 1);
    m->tokbuf = malloc(tokbuf_cap + 1);
    m->chunk = malloc(MDM_CHUNK);
    if (m->body == NULL || m->tokbuf == NULL || m->chunk == NULL) {
        mdm_free_buffers(m);
        return ESP_ERR_NO_MEM;
    }
    m->body_cap = body_cap + 1;
    m->tokbuf_cap = tokbuf_cap + 1;
    return ESP_OK;
}

void mdm_free_buffers(mdm_t *m)
{
    if (m->tokbuf != NULL) {
        mdm_wipe(m->tokbuf, m->tokbuf_cap);
    }
    free(m->body);
    free(m->tokbuf);
    free(m->chunk);
    m->body = NULL;
    m->tokbuf = NULL;
    m->chunk = NULL;
}

uint32_t mdm_backoff_ms(uint32_t attempt, uint32_t min_ms, uint32_t max_ms, uint32_t rnd)
{
    if (min_ms == 0) {
        min_ms = 1;
    }
    if (max_ms < min_ms) {
        max_ms = min_ms;
    }
    uint64_t d = min_ms;
    for (uint32_t i = 1; i < attempt && d < max_ms; i++) {
        d *= 2;
    }
    if (d > max_ms) {
        d = max_ms;
    }
    uint64_t half = d / 2;
    uint64_t out = half + (uint64_t)rnd % (d - half + 1);
    return out == 0 ? 1 : (uint32_t)out;
}

static void to_hex(const uint8_t *b, size_t n, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[b[i] >> 4];
        out[2 * i + 1] = digits[b[i] & 15];
    }
    out[2 * n] = '\0';
}

#if MBEDTLS_VERSION_MAJOR >= 4
struct mdm_sha256 {
    psa_hash_operation_t op;
};

mdm_sha256_t *mdm_sha256_new(void)
{
    if (psa_crypto_init() != PSA_SUCCESS) {
        return NULL;
    }
    mdm_sha256_t *h = calloc(1, sizeof(*h));
    if (h == NULL) {
        return NULL;
    }
    h->op = psa_hash_operation_init();
    if (psa_hash_setup(&h->op, PSA_ALG_SHA_256) != PSA_SUCCESS) {
        free(h);
        return NULL;
    }
    return h;
}

esp_err_t mdm_sha256_update(mdm_sha256_t *h, const void *data, size_t len)
{
    return psa_hash_update(&h->op, data, len) == PSA_SUCCESS ? ESP_OK : ESP_FAIL;
}

esp_err_t mdm_sha256_finish_hex(mdm_sha256_t *h, char out[MDM_SHA_HEX])
{
    uint8_t sum[32];
    size_t n = 0;
    if (psa_hash_finish(&h->op, sum, sizeof(sum), &n) != PSA_SUCCESS || n != sizeof(sum)) {
        return ESP_FAIL;
    }
    to_hex(sum, sizeof(sum), out);
    return ESP_OK;
}

void mdm_sha256_free(mdm_sha256_t *h)
{
    if (h != NULL) {
        psa_hash_abort(&h->op);
        free(h);
    }
}
#else
struct mdm_sha256 {
    mbedtls_sha256_context c;
};

mdm_sha256_t *mdm_sha256_new(void)
{
    mdm_sha256_t *h = calloc(1, sizeof(*h));
    if (h == NULL) {
        return NULL;
    }
    mbedtls_sha256_init(&h->c);
    if (mbedtls_sha256_starts(&h->c, 0) != 0) {
        free(h);
        return NULL;
    }
    return h;
}

esp_err_t mdm_sha256_update(mdm_sha256_t *h, const void *data, size_t len)
{
    return mbedtls_sha256_update(&h->c, data, len) == 0 ? ESP_OK : ESP_FAIL;
}

esp_err_t mdm_sha256_finish_hex(mdm_sha256_t *h, char out[MDM_SHA_HEX])
{
    uint8_t sum[32];
    if (mbedtls_sha256_finish(&h->c, sum) != 0) {
        return ESP_FAIL;
    }
    to_hex(sum, sizeof(sum), out);
    return ESP_OK;
}

void mdm_sha256_free(mdm_sha256_t *h)
{
    if (h != NULL) {
        mbedtls_sha256_free(&h->c);
        free(h);
    }
}
#endif

esp_err_t mdm_sha256_hex(const void *data, size_t len, char out[MDM_SHA_HEX])
{
    mdm_sha256_t *h = mdm_sha256_new();
    if (h == NULL) {
        return ESP_ERR_NO_MEM;
    }
    esp_err_t err = mdm_sha256_update(h, data, len);
    if (err == ESP_OK) {
        err = mdm_sha256_finish_hex(h, out);
    }
    mdm_sha256_free(h);
    return err;
}

bool mdm_is_sha_hex(const char *s)
{
    if (s == NULL || strlen(s) != 64) {
        return false;
    }
    for (size_t i = 0; i < 64; i++) {
        if (!isxdigit((unsigned char)s[i])) {
            return false;
        }
    }
    return true;
}

static bool append(char *out, size_t cap, size_t *n, char c)
{
    if (*n + 1 >= cap) {
        return false;
    }
    out[(*n)++] = c;
    out[*n] = '\0';
    return true;
}

bool mdm_form_append(char *out, size_t cap, const char *name, const char *value, bool first)
{
    static const char digits[] = "0123456789ABCDEF";
    size_t n = first ? 0 : strnlen(out, cap);
    if (first && cap > 0) {
        out[0] = '\0';
    }
    if (!first && !append(out, cap, &n, '&')) {
        return false;
    }
    for (const char *p = name; *p; p++) {
        if (!append(out, cap, &n, *p)) {
            return false;
        }
    }
    if (!append(out, cap, &n, '=')) {
        return false;
    }
    for (const unsigned char *p = (const unsigned char *)value; *p; p++) {
        if (isalnum(*p) || *p == '-' || *p == '_' || *p == '.' || *p == '~') {
            if (!append(out, cap, &n, (char)*p)) {
                return false;
            }
        } else if (!append(out, cap, &n, '%') || !append(out, cap, &n, digits[*p >> 4]) ||
                   !append(out, cap, &n, digits[*p & 15])) {
            return false;
        }
    }
    return true;
}

bool mdm_fmt(char *out, size_t cap, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(out, cap, fmt, ap);
    va_end(ap);
    return n >= 0 && (size_t)n < cap;
}

bool mdm_copy(char *dst, size_t cap, const char *src)
{
    size_t n = strlen(src);
    if (n >= cap) {
        if (cap > 0) {
            dst[0] = '\0';
        }
        return false;
    }
    memcpy(dst, src, n + 1);
    return true;
}

void mdm_wipe(void *p, size_t n)
{
    volatile uint8_t *b = p;
    while (n--) {
        *b++ = 0;
    }
}

bool mdm_model_code(const char *client_id, char *out, size_t cap)
{
    static const char prefix[] = "iotdevice-";
    size_t plen = sizeof(prefix) - 1;
    size_t n = strlen(client_id);
    /* iotdevice-<code>-<key: 8 of [a-z0-9]> */
    if (n < plen + 1 + 1 + 8 || strncmp(client_id, prefix, plen) != 0 || client_id[n - 9] != '-') {
        return false;
    }
    size_t code_len = n - 9 - plen;
    if (code_len == 0 || code_len >= cap || code_len > 50) {
        return false;
    }
    for (size_t i = 0; i < code_len; i++) {
        char c = client_id[plen + i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_')) {
            return false;
        }
    }
    for (size_t i = n - 8; i < n; i++) {
        char c = client_id[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'))) {
            return false;
        }
    }
    memcpy(out, client_id + plen, code_len);
    out[code_len] = '\0';
    return true;
}

bool mdm_url(const mdm_t *m, const char *path, char *out, size_t cap)
{
    const char *base = m->prov.base_url;
    size_t n = strlen(base);
    while (n > 0 && base[n - 1] == '/') {
        n--;
    }
    return mdm_fmt(out, cap, "%.*s%s", (int)n, base, path);
}

mdm_res_t mdm_fail(mdm_err_t *e, espmdm_op_t op, esp_err_t err, int status, const char *fmt, ...)
{
    e->op = op;
    e->err = err;
    e->http_status = status;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof(e->message), fmt, ap);
    va_end(ap);
    return MDM_RETRY;
}

void mdm_post_error(mdm_t *m, const mdm_err_t *e, uint32_t attempt, uint32_t retry_in_ms)
{
    espmdm_event_error_t ev = {
        .op = e->op,
        .err = e->err,
        .http_status = e->http_status,
        .attempt = attempt,
        .retry_in_ms = retry_in_ms,
    };
    mdm_copy(ev.message, sizeof(ev.message), e->message);
    ESP_LOGW(TAG, "%s: %s (attempt %u, retry in %u ms)", espmdm_op_name(e->op), e->message,
             (unsigned)attempt, (unsigned)retry_in_ms);
    m->sys.post(m->sys.ctx, ESPMDM_EVENT_ERROR, &ev, sizeof(ev));
}

void mdm_step(mdm_t *m, espmdm_step_t step)
{
    if (m->cfg.step_hook != NULL) {
        /* Whatever was posted before the step reaches the handlers first. */
        m->sys.drain(m->sys.ctx);
        m->cfg.step_hook(step, m->cfg.step_hook_arg);
    }
}

static const char *const step_names[ESPMDM_STEP_COUNT] = {
    [ESPMDM_STEP_AFTER_FETCH] = "after_fetch",
    [ESPMDM_STEP_AFTER_WRITE_NEXT] = "after_write_next",
    [ESPMDM_STEP_AFTER_TOKEN_NEXT] = "after_token_next",
    [ESPMDM_STEP_AFTER_ACK] = "after_ack",
    [ESPMDM_STEP_AFTER_PROMOTE] = "after_promote",
    [ESPMDM_STEP_BOOT_AFTER_PROMOTE] = "boot_after_promote",
    [ESPMDM_STEP_OTA_MID_DOWNLOAD] = "ota_mid_download",
    [ESPMDM_STEP_OTA_AFTER_VERIFY] = "ota_after_verify",
    [ESPMDM_STEP_OTA_BEFORE_REBOOT] = "ota_before_reboot",
    [ESPMDM_STEP_OTA_BEFORE_CONFIRM] = "ota_before_confirm",
};

const char *espmdm_step_name(espmdm_step_t step)
{
    return (unsigned)step < ESPMDM_STEP_COUNT ? step_names[step] : "unknown";
}

esp_err_t espmdm_step_from_name(const char *name, espmdm_step_t *out)
{
    if (name == NULL || out == NULL) {
        return ESP_ERR_INVALID_ARG;
    }
    for (int i = 0; i < ESPMDM_STEP_COUNT; i++) {
        if (strcmp(step_names[i], name) == 0) {
            *out = (espmdm_step_t)i;
            return ESP_OK;
        }
    }
    return ESP_ERR_NOT_FOUND;
}

const char *espmdm_event_name(int32_t id)
{
    switch ((espmdm_event_id_t)id) {
    case ESPMDM_EVENT_BOOT: return "boot";
    case ESPMDM_EVENT_TOKEN: return "token";
    case ESPMDM_EVENT_SUBSCRIBED: return "subscribed";
    case ESPMDM_EVENT_CONFIG: return "config";
    case ESPMDM_EVENT_NUDGE: return "nudge";
    case ESPMDM_EVENT_ROTATION_FETCHED: return "rotation_fetched";
    case ESPMDM_EVENT_ROTATION_ACKED: return "rotation_acked";
    case ESPMDM_EVENT_PROMOTED: return "promoted";
    case ESPMDM_EVENT_OTA_STARTED: return "ota_started";
    case ESPMDM_EVENT_OTA_INSTALLED: return "ota_installed";
    case ESPMDM_EVENT_OTA_CONFIRMED: return "ota_confirmed";
    case ESPMDM_EVENT_OTA_ROLLED_BACK: return "ota_rolled_back";
    case ESPMDM_EVENT_OTA_FAILED: return "ota_failed";
    case ESPMDM_EVENT_STATE_REPORTED: return "state_reported";
    case ESPMDM_EVENT_COREDUMP_UPLOADED: return "coredump_uploaded";
    case ESPMDM_EVENT_REBOOTING: return "reboot";
    case ESPMDM_EVENT_ERROR: return "error";
    case ESPMDM_EVENT_CONNECTED: return "connected";
    }
    return "unknown";
}

const char *espmdm_op_name(espmdm_op_t op)
{
    switch (op) {
    case ESPMDM_OP_PROVISIONING: return "provisioning";
    case ESPMDM_OP_TOKEN: return "token";
    case ESPMDM_OP_CONFIG: return "config";
    case ESPMDM_OP_ROTATION: return "rotation";
    case ESPMDM_OP_FIRMWARE: return "firmware";
    case ESPMDM_OP_STATE: return "state";
    case ESPMDM_OP_COREDUMP: return "coredump";
    case ESPMDM_OP_MQTT: return "mqtt";
    case ESPMDM_OP_NETWORK: return "network";
    }
    return "unknown";
}
