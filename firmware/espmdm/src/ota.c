/*
 * Firmware: check (GET /iot/firmware-version), download (GET /iot/firmware, resumed with Range
 * and If-Range from the last committed checkpoint), verify (SHA-256 against the version
 * answer's sha256, else the download's ETag), install through the port, reboot; at the next
 * start, confirm the image once it has checked in (the port cancels the rollback), or record
 * that the bootloader rolled it back.
 *
 * Persisted in the namespace "espmdm": the download in progress (ota_ver, ota_sha, ota_off,
 * ota_size), the last attempt (ota_tgt, ota_res) for the state report, and a target that failed
 * (ota_bad_ver, ota_bad_sha) so that a bad image is not fetched again and again.
 */
#include <ctype.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "cJSON.h"
#include "esp_log.h"

#include "mdm.h"

static const char *TAG = "espmdm.ota";

#define RES_PENDING "pending"
#define RES_INSTALLED "installed"
#define RES_ROLLED_BACK "rolled_back"
#define RES_DOWNLOAD_FAILED "download_failed"
#define RES_VERIFY_FAILED "verify_failed"

static esp_err_t get_str(mdm_t *m, const char *key, char *out, size_t cap)
{
    size_t len = cap;
    esp_err_t err = m->store->get_str(m->store_ctx, MDM_NS_STATE, key, out, &len);
    if (err != ESP_OK) {
        out[0] = '\0';
    }
    return err == ESP_ERR_NOT_FOUND ? ESP_OK : err;
}

esp_err_t mdm_ota_progress_load(mdm_t *m, mdm_ota_progress_t *p)
{
    memset(p, 0, sizeof(*p));
    esp_err_t err = get_str(m, "ota_ver", p->version, sizeof(p->version));
    if (err == ESP_OK) {
        err = get_str(m, "ota_sha", p->sha, sizeof(p->sha));
    }
    if (err == ESP_OK && m->store->get_u32(m->store_ctx, MDM_NS_STATE, "ota_off", &p->offset) != ESP_OK) {
        p->offset = 0;
    }
    if (err == ESP_OK && m->store->get_u32(m->store_ctx, MDM_NS_STATE, "ota_size", &p->size) != ESP_OK) {
        p->size = 0;
    }
    if (err != ESP_OK || p->version[0] == '\0' || p->offset > p->size) {
        memset(p, 0, sizeof(*p));
    }
    return err;
}

esp_err_t mdm_ota_progress_save(mdm_t *m, const mdm_ota_progress_t *p)
{
    esp_err_t err = m->store->set_str(m->store_ctx, MDM_NS_STATE, "ota_ver", p->version);
    if (err == ESP_OK) {
        err = m->store->set_str(m->store_ctx, MDM_NS_STATE, "ota_sha", p->sha);
    }
    if (err == ESP_OK) {
        err = m->store->set_u32(m->store_ctx, MDM_NS_STATE, "ota_off", p->offset);
    }
    if (err == ESP_OK) {
        err = m->store->set_u32(m->store_ctx, MDM_NS_STATE, "ota_size", p->size);
    }
    if (err == ESP_OK) {
        err = m->store->commit(m->store_ctx, MDM_NS_STATE);
    }
    return err;
}

esp_err_t mdm_ota_progress_clear(mdm_t *m)
{
    const char *keys[] = {"ota_ver", "ota_sha", "ota_off", "ota_size"};
    esp_err_t err = ESP_OK;
    for (size_t i = 0; i < 4 && err == ESP_OK; i++) {
        err = m->store->erase(m->store_ctx, MDM_NS_STATE, keys[i]);
    }
    return err == ESP_OK ? m->store->commit(m->store_ctx, MDM_NS_STATE) : err;
}

/* Records the last attempt (and, for a failure, the target not to fetch again). */
static esp_err_t record(mdm_t *m, const char *target, const char *result, const char *bad_sha)
{
    esp_err_t err = m->store->set_str(m->store_ctx, MDM_NS_STATE, "ota_tgt", target);
    if (err == ESP_OK) {
        err = m->store->set_str(m->store_ctx, MDM_NS_STATE, "ota_res", result);
    }
    if (err == ESP_OK && bad_sha != NULL) {
        err = m->store->set_str(m->store_ctx, MDM_NS_STATE, "ota_bad_ver", target);
        if (err == ESP_OK) {
            err = m->store->set_str(m->store_ctx, MDM_NS_STATE, "ota_bad_sha", bad_sha);
        }
    }
    if (err == ESP_OK) {
        err = m->store->commit(m->store_ctx, MDM_NS_STATE);
    }
    mdm_copy(m->ota_target, sizeof(m->ota_target), target);
    mdm_copy(m->ota_result, sizeof(m->ota_result), strcmp(result, RES_PENDING) == 0 ? RES_INSTALLED : result);
    return err;
}

static void post_ota(mdm_t *m, int32_t id, const char *version, uint32_t offset, uint32_t size, const char *result)
{
    espmdm_event_ota_t ev = {.offset = offset, .size = size};
    mdm_copy(ev.version, sizeof(ev.version), version);
    if (result != NULL) {
        mdm_copy(ev.result, sizeof(ev.result), result);
    }
    m->sys.post(m->sys.ctx, id, &ev, sizeof(ev));
}

void mdm_ota_boot(mdm_t *m)
{
    char tgt[MDM_VERSION_MAX], res[16];
    get_str(m, "ota_tgt", tgt, sizeof(tgt));
    get_str(m, "ota_res", res, sizeof(res));
    if (tgt[0] == '\0') {
        return;
    }
    if (strcmp(res, RES_PENDING) == 0 && strcmp(m->app.version, tgt) != 0) {
        /* The image we installed is not the one running: the bootloader went back (it never
         * confirmed), or it never booted. Do not offer it to ourselves again. */
        ESP_LOGW(TAG, "firmware %s was rolled back; running %s", tgt, m->app.version);
        record(m, tgt, RES_ROLLED_BACK, "");
        post_ota(m, ESPMDM_EVENT_OTA_ROLLED_BACK, tgt, 0, 0, NULL);
        return;
    }
    mdm_copy(m->ota_target, sizeof(m->ota_target), tgt);
    mdm_copy(m->ota_result, sizeof(m->ota_result), strcmp(res, RES_PENDING) == 0 ? RES_INSTALLED : res);
}

mdm_res_t mdm_ota_checked_in(mdm_t *m, mdm_err_t *e)
{
    if (m->app.ota_state != ESPMDM_OTA_STATE_PENDING_VERIFY || m->ota_checked_in) {
        return MDM_DONE;
    }
    mdm_step(m, ESPMDM_STEP_OTA_BEFORE_CONFIRM);
    esp_err_t err = m->port->ota_mark_valid(m->port_ctx);
    if (err != ESP_OK) {
        return mdm_fail(e, ESPMDM_OP_FIRMWARE, err, 0, "confirming the running image: %s", esp_err_to_name(err));
    }
    m->ota_checked_in = true;
    m->app.ota_state = ESPMDM_OTA_STATE_VALID;
    if (strcmp(m->ota_target, m->app.version) == 0) {
        record(m, m->app.version, RES_INSTALLED, NULL);
    }
    ESP_LOGI(TAG, "firmware %s checked in: confirmed", m->app.version);
    post_ota(m, ESPMDM_EVENT_OTA_CONFIRMED, m->app.version, 0, 0, NULL);
    mdm_job_now(m, MDM_JOB_REPORT);
    return MDM_DONE;
}

/* The download in flight. */
typedef struct {
    mdm_t *m;
    mdm_ota_progress_t *p;
    mdm_http_resp_t *resp;
    mdm_sha256_t *hash;
    const char *version;
    uint32_t written;
    bool began;
    bool mid_done;
    esp_err_t fail;       /* why the sink stopped */
    char why[96];
} dl_t;

static bool parse_content_range(const char *s, uint32_t *start, uint32_t *total)
{
    unsigned long long a, b, t;
    if (sscanf(s, "bytes %llu-%llu/%llu", &a, &b, &t) != 3 || a > b || b >= t || t > UINT32_MAX) {
        return false;
    }
    *start = (uint32_t)a;
    *total = (uint32_t)t;
    return true;
}

/* An ETag that is a quoted SHA-256 (espmdm's), lowercased into out. */
static bool etag_sha(const char *etag, char out[MDM_SHA_HEX])
{
    if (strncmp(etag, "W/", 2) == 0) {
        return false; /* a weak tag says nothing about the bytes */
    }
    size_t n = strlen(etag);
    if (n != 66 || etag[0] != '"' || etag[65] != '"') {
        return false;
    }
    char hex[MDM_SHA_HEX];
    memcpy(hex, etag + 1, 64);
    hex[64] = '\0';
    if (!mdm_is_sha_hex(hex)) {
        return false;
    }
    for (int i = 0; i < 65; i++) {
        out[i] = (char)tolower((unsigned char)hex[i]);
    }
    return true;
}

static esp_err_t dl_stop(dl_t *d, esp_err_t err, const char *why)
{
    d->fail = err;
    mdm_copy(d->why, sizeof(d->why), why);
    return err;
}

/* First bytes of the answer: a 206 continues at the committed offset (its bytes are hashed
 * again from the slot), a 200 starts afresh. */
static esp_err_t dl_begin(dl_t *d)
{
    mdm_t *m = d->m;
    mdm_ota_progress_t *p = d->p;
    uint32_t start = 0, total = 0;
    if (d->resp->status == 206) {
        if (!parse_content_range(d->resp->content_range, &start, &total) || start != p->offset ||
            (p->size != 0 && total != p->size)) {
            return dl_stop(d, ESP_ERR_INVALID_RESPONSE, "a 206 whose Content-Range does not continue the download");
        }
    } else if (d->resp->status == 200) {
        if (d->resp->content_length <= 0 || d->resp->content_length > UINT32_MAX) {
            return dl_stop(d, ESP_ERR_INVALID_RESPONSE, "the firmware answer has no Content-Length");
        }
        total = (uint32_t)d->resp->content_length;
        p->offset = 0;
    } else {
        return dl_stop(d, ESP_ERR_INVALID_RESPONSE, "not a firmware answer");
    }
    if (p->sha[0] == '\0') {
        etag_sha(d->resp->etag, p->sha);
    }
    p->size = total;
    /* Committed before the slot is touched: a crash from here on resumes from this offset
     * (0 when the answer starts afresh) with this image's tag. */
    esp_err_t err = mdm_ota_progress_save(m, p);
    if (err != ESP_OK) {
        return dl_stop(d, err, "committing the download's start");
    }
    err = m->port->ota_begin(m->port_ctx, total, p->offset);
    if (err != ESP_OK) {
        return dl_stop(d, err, "the OTA slot refused the image");
    }
    d->hash = mdm_sha256_new();
    if (d->hash == NULL) {
        return dl_stop(d, ESP_ERR_NO_MEM, "out of memory for the hash");
    }
    for (uint32_t off = 0; off < p->offset;) {
        size_t n = p->offset - off < m->body_cap ? p->offset - off : m->body_cap;
        err = m->port->ota_read(m->port_ctx, off, m->body, n);
        if (err == ESP_OK) {
            err = mdm_sha256_update(d->hash, m->body, n);
        }
        if (err != ESP_OK) {
            return dl_stop(d, err, "reading back the downloaded part");
        }
        off += (uint32_t)n;
    }
    d->written = p->offset;
    d->began = true;
    post_ota(m, ESPMDM_EVENT_OTA_STARTED, d->version, p->offset, p->size, NULL);
    ESP_LOGI(TAG, "downloading %s: %" PRIu32 " of %" PRIu32 " bytes from byte %" PRIu32, d->version,
             p->size - p->offset, p->size, p->offset);
    return ESP_OK;
}

static esp_err_t dl_sink(void *ctx, const uint8_t *data, size_t len)
{
    dl_t *d = ctx;
    mdm_t *m = d->m;
    if (m->stopping) {
        return dl_stop(d, ESP_ERR_INVALID_STATE, "stopping");
    }
    if (d->resp->status != 200 && d->resp->status != 206) {
        return ESP_OK; /* an error's body (problem+json): nothing to write */
    }
    if (!d->began) {
        esp_err_t err = dl_begin(d);
        if (err != ESP_OK) {
            return err;
        }
    }
    if ((uint64_t)d->written + len > d->p->size) {
        return dl_stop(d, ESP_ERR_INVALID_SIZE, "more bytes than the image's size");
    }
    esp_err_t err = m->port->ota_write(m->port_ctx, data, len);
    if (err == ESP_OK) {
        err = mdm_sha256_update(d->hash, data, len);
    }
    if (err != ESP_OK) {
        return dl_stop(d, err, "writing the OTA slot");
    }
    d->written += (uint32_t)len;
    uint32_t step = CONFIG_ESPMDM_OTA_CHECKPOINT_BYTES;
    if (d->written - d->p->offset >= step || d->written == d->p->size) {
        /* Checkpoint: the bytes are durable before the offset that counts on them. */
        err = m->port->ota_flush(m->port_ctx);
        if (err == ESP_OK) {
            d->p->offset = d->written;
            err = mdm_ota_progress_save(m, d->p);
        }
        if (err != ESP_OK) {
            return dl_stop(d, err, "committing the download's progress");
        }
        if (!d->mid_done && (uint64_t)d->written * 2 >= d->p->size && d->written < d->p->size) {
            d->mid_done = true;
            mdm_step(m, ESPMDM_STEP_OTA_MID_DOWNLOAD);
        }
    }
    return ESP_OK;
}

/* A failure that retrying the same image will not cure: recorded, reported, not retried until
 * espmdm offers something else (or the next firmware nudge). */
static mdm_res_t give_up(mdm_t *m, const char *version, const char *sha, const char *result, mdm_err_t *e)
{
    m->port->ota_abort(m->port_ctx);
    mdm_ota_progress_clear(m);
    record(m, version, result, sha);
    post_ota(m, ESPMDM_EVENT_OTA_FAILED, version, 0, 0, result);
    mdm_post_error(m, e, 1, 0);
    mdm_job_now(m, MDM_JOB_REPORT);
    return MDM_DONE;
}

static mdm_res_t download(mdm_t *m, const char *version, const char *sha, mdm_err_t *e)
{
    mdm_ota_progress_t p;
    mdm_ota_progress_load(m, &p);
    bool resume = strcmp(p.version, version) == 0 && p.offset > 0 &&
                  (sha[0] == '\0' || p.sha[0] == '\0' || strcasecmp(p.sha, sha) == 0);
    if (!resume) {
        memset(&p, 0, sizeof(p));
        mdm_copy(p.version, sizeof(p.version), version);
    }
    if (sha[0] != '\0') {
        mdm_copy(p.sha, sizeof(p.sha), sha);
    }
    esp_err_t err = mdm_ota_progress_save(m, &p);
    if (err != ESP_OK) {
        return mdm_fail(e, ESPMDM_OP_FIRMWARE, err, 0, "committing the download's start: %s", esp_err_to_name(err));
    }
    char url[MDM_URL_MAX + 32], range[40], if_range[72];
    if (!mdm_url(m, "/iot/firmware", url, sizeof(url))) {
        return mdm_fail(e, ESPMDM_OP_FIRMWARE, ESP_ERR_INVALID_SIZE, 0, "base_url too long");
    }
    mdm_http_resp_t resp;
    dl_t d = {.m = m, .p = &p, .resp = &resp, .version = version};
    mdm_http_req_t req = {.method = "GET", .url = url, .buf = (char *)m->chunk, .cap = MDM_CHUNK,
                          .sink = dl_sink, .sink_ctx = &d};
    if (resume) {
        mdm_fmt(range, sizeof(range), "bytes=%" PRIu32 "-", p.offset);
        req.range = range;
        if (p.sha[0] != '\0') {
            /* Only these bytes: a different image answers 200 and the download starts afresh. */
            mdm_fmt(if_range, sizeof(if_range), "\"%s\"", p.sha);
            req.if_range = if_range;
        }
    }
    mdm_res_t res = mdm_iot(m, &req, &resp, ESPMDM_OP_FIRMWARE, e);
    mdm_sha256_t *hash = d.hash;
    char sum[MDM_SHA_HEX] = "";
    /* Whatever went wrong, what is committed stays for the resume. */
    if (d.fail != ESP_OK) {
        res = mdm_fail(e, ESPMDM_OP_FIRMWARE, d.fail, resp.status, "firmware download: %s (%s)", d.why,
                       esp_err_to_name(d.fail));
        if (d.fail == ESP_ERR_INVALID_RESPONSE) {
            mdm_ota_progress_clear(m); /* an answer that does not continue ours: start afresh */
        }
        if (d.fail == ESP_ERR_INVALID_SIZE || d.fail == ESP_ERR_NOT_SUPPORTED) {
            mdm_sha256_free(hash);
            return give_up(m, version, sha, RES_DOWNLOAD_FAILED, e);
        }
    } else if (res != MDM_DONE) {
        if (d.began) {
            esp_err_t cause = e->err;
            res = mdm_fail(e, ESPMDM_OP_FIRMWARE, cause, resp.status,
                           "firmware download cut off at %" PRIu32 " of %" PRIu32 " bytes (%s); resuming from %" PRIu32,
                           d.written, p.size, esp_err_to_name(cause), p.offset);
        }
    } else if (resp.status == 416) {
        mdm_ota_progress_clear(m);
        res = mdm_fail(e, ESPMDM_OP_FIRMWARE, ESP_FAIL, 416, "firmware range refused (416): starting afresh");
    } else if (resp.status != 200 && resp.status != 206) {
        e->retry_after_ms = resp.retry_after_s * 1000;
        res = mdm_fail(e, ESPMDM_OP_FIRMWARE, ESP_FAIL, resp.status, "firmware download: espmdm answered %d",
                       resp.status);
    } else if (!d.began || d.written != p.size || hash == NULL) {
        res = mdm_fail(e, ESPMDM_OP_FIRMWARE, ESP_ERR_INVALID_SIZE, resp.status,
                       "firmware download cut off at %" PRIu32 " of %" PRIu32 " bytes", d.written, p.size);
    } else {
        err = mdm_sha256_finish_hex(hash, sum);
        if (err != ESP_OK) {
            res = mdm_fail(e, ESPMDM_OP_FIRMWARE, err, 0, "hashing the image: %s", esp_err_to_name(err));
        }
    }
    mdm_sha256_free(hash);
    if (res != MDM_DONE) {
        return res;
    }
    const char *want = sha[0] != '\0' ? sha : p.sha;
    if (!mdm_is_sha_hex(want)) {
        mdm_fail(e, ESPMDM_OP_FIRMWARE, ESP_ERR_INVALID_RESPONSE, 0,
                 "firmware %s: no SHA-256 to verify it against (neither sha256 nor an ETag)", version);
        return give_up(m, version, sum, RES_VERIFY_FAILED, e);
    }
    if (strcasecmp(want, sum) != 0) {
        mdm_fail(e, ESPMDM_OP_FIRMWARE, ESP_ERR_INVALID_CRC, 0, "firmware %s: SHA-256 %.12s... is not the expected %.12s...",
                 version, sum, want);
        return give_up(m, version, want, RES_VERIFY_FAILED, e);
    }
    mdm_step(m, ESPMDM_STEP_OTA_AFTER_VERIFY);
    err = m->port->ota_end(m->port_ctx);
    if (err != ESP_OK) {
        mdm_fail(e, ESPMDM_OP_FIRMWARE, err, 0, "firmware %s: the image was refused: %s", version, esp_err_to_name(err));
        return give_up(m, version, want, RES_VERIFY_FAILED, e);
    }
    /* Installed: the next boot runs it, pending verification. */
    err = record(m, version, RES_PENDING, NULL);
    if (err == ESP_OK) {
        err = mdm_ota_progress_clear(m);
    }
    if (err != ESP_OK) {
        return mdm_fail(e, ESPMDM_OP_FIRMWARE, err, 0, "recording the installation: %s", esp_err_to_name(err));
    }
    ESP_LOGI(TAG, "firmware %s installed", version);
    post_ota(m, ESPMDM_EVENT_OTA_INSTALLED, version, 0, p.size, NULL);
    mdm_step(m, ESPMDM_STEP_OTA_BEFORE_REBOOT);
    if (m->cfg.ota_reboot) {
        espmdm_event_reboot_t ev = {.reason = "ota"};
        m->sys.post(m->sys.ctx, ESPMDM_EVENT_REBOOTING, &ev, sizeof(ev));
        m->sys.drain(m->sys.ctx);
        m->port->reboot(m->port_ctx);
    }
    return MDM_DONE;
}

mdm_res_t mdm_ota_run(mdm_t *m, mdm_err_t *e)
{
    char url[MDM_URL_MAX + 32];
    if (!mdm_url(m, "/iot/firmware-version", url, sizeof(url))) {
        return mdm_fail(e, ESPMDM_OP_FIRMWARE, ESP_ERR_INVALID_SIZE, 0, "base_url too long");
    }
    mdm_http_req_t req = {.method = "GET", .url = url, .buf = m->body, .cap = m->body_cap};
    mdm_http_resp_t resp;
    mdm_res_t res = mdm_iot(m, &req, &resp, ESPMDM_OP_FIRMWARE, e);
    if (res != MDM_DONE) {
        return res;
    }
    if (resp.status != 200 || resp.too_long) {
        e->retry_after_ms = resp.retry_after_s * 1000;
        return mdm_fail(e, ESPMDM_OP_FIRMWARE, ESP_FAIL, resp.status, "firmware version: espmdm answered %d",
                        resp.status);
    }
    cJSON *doc = cJSON_ParseWithLength(m->body, resp.len);
    if (doc == NULL || !cJSON_IsObject(doc)) {
        cJSON_Delete(doc);
        return mdm_fail(e, ESPMDM_OP_FIRMWARE, ESP_ERR_INVALID_RESPONSE, resp.status, "firmware version: not a JSON object");
    }
    char version[MDM_VERSION_MAX] = "", sha[MDM_SHA_HEX] = "";
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(doc, "firmware_version");
    const cJSON *s = cJSON_GetObjectItemCaseSensitive(doc, "sha256");
    bool ok = true;
    if (cJSON_IsString(v)) {
        ok = mdm_copy(version, sizeof(version), v->valuestring);
    }
    if (cJSON_IsString(s) && mdm_is_sha_hex(s->valuestring)) {
        for (int i = 0; i < 65; i++) {
            sha[i] = (char)tolower((unsigned char)s->valuestring[i]);
        }
    }
    cJSON_Delete(doc);
    if (!ok) {
        return mdm_fail(e, ESPMDM_OP_FIRMWARE, ESP_ERR_INVALID_SIZE, 0, "firmware version longer than %d bytes",
                        MDM_VERSION_MAX - 1);
    }
    if (version[0] == '\0' || strcmp(version, m->app.version) == 0) {
        mdm_ota_progress_t p;
        if (mdm_ota_progress_load(m, &p) == ESP_OK && p.version[0] != '\0') {
            mdm_ota_progress_clear(m); /* a download of something no longer offered */
        }
        return MDM_DONE;
    }
    char bad_ver[MDM_VERSION_MAX], bad_sha[MDM_SHA_HEX];
    get_str(m, "ota_bad_ver", bad_ver, sizeof(bad_ver));
    get_str(m, "ota_bad_sha", bad_sha, sizeof(bad_sha));
    if (strcmp(bad_ver, version) == 0 && (bad_sha[0] == '\0' || sha[0] == '\0' || strcasecmp(bad_sha, sha) == 0)) {
        ESP_LOGI(TAG, "firmware %s failed here before: not installing it again", version);
        return MDM_DONE;
    }
    return download(m, version, sha, e);
}
