#include "fakes.h"

#include <ctype.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "esp_http_client.h"

/* ================================================================ store */

static fake_kv_t *find(fake_kv_t *kv, int n, const char *ns, const char *key)
{
    for (int i = n - 1; i >= 0; i--) {
        if (strcmp(kv[i].ns, ns) == 0 && strcmp(kv[i].key, key) == 0) {
            return &kv[i];
        }
    }
    return NULL;
}

/* The value a read sees: the last pending write, else the durable one. */
static fake_kv_t *visible(fake_store_t *s, const char *ns, const char *key)
{
    fake_kv_t *kv = find(s->pending, s->n_pending, ns, key);
    if (kv == NULL) {
        kv = find(s->durable, s->n_durable, ns, key);
    }
    return kv != NULL && !kv->erased ? kv : NULL;
}

static esp_err_t st_open(void *ctx)
{
    return ((fake_store_t *)ctx)->open_err;
}

static void st_close(void *ctx)
{
}

static esp_err_t st_get_str(void *ctx, const char *ns, const char *key, char *out, size_t *len)
{
    fake_kv_t *kv = visible(ctx, ns, key);
    if (kv == NULL || kv->is_u32) {
        return ESP_ERR_NOT_FOUND;
    }
    if (strlen(kv->str) + 1 > *len) {
        return ESP_ERR_INVALID_SIZE;
    }
    strcpy(out, kv->str);
    *len = strlen(kv->str) + 1;
    return ESP_OK;
}

static fake_kv_t *add_pending(fake_store_t *s, const char *ns, const char *key)
{
    if (s->n_pending >= FAKE_STORE_MAX) {
        return NULL;
    }
    fake_kv_t *kv = &s->pending[s->n_pending++];
    memset(kv, 0, sizeof(*kv));
    strcpy(kv->ns, ns);
    strcpy(kv->key, key);
    return kv;
}

static esp_err_t st_set_str(void *ctx, const char *ns, const char *key, const char *value)
{
    if (strlen(value) >= sizeof(((fake_kv_t *)0)->str) || strlen(key) > 15) {
        return ESP_ERR_INVALID_SIZE;
    }
    fake_kv_t *kv = add_pending(ctx, ns, key);
    if (kv == NULL) {
        return ESP_ERR_NO_MEM;
    }
    strcpy(kv->str, value);
    return ESP_OK;
}

static esp_err_t st_get_u32(void *ctx, const char *ns, const char *key, uint32_t *out)
{
    fake_kv_t *kv = visible(ctx, ns, key);
    if (kv == NULL || !kv->is_u32) {
        return ESP_ERR_NOT_FOUND;
    }
    *out = kv->u32;
    return ESP_OK;
}

static esp_err_t st_set_u32(void *ctx, const char *ns, const char *key, uint32_t value)
{
    fake_kv_t *kv = add_pending(ctx, ns, key);
    if (kv == NULL) {
        return ESP_ERR_NO_MEM;
    }
    kv->is_u32 = true;
    kv->u32 = value;
    return ESP_OK;
}

static esp_err_t st_erase(void *ctx, const char *ns, const char *key)
{
    fake_kv_t *kv = add_pending(ctx, ns, key);
    if (kv == NULL) {
        return ESP_ERR_NO_MEM;
    }
    kv->erased = true;
    return ESP_OK;
}

static esp_err_t st_commit(void *ctx, const char *ns)
{
    fake_store_t *s = ctx;
    int keep = 0;
    for (int i = 0; i < s->n_pending; i++) {
        fake_kv_t *p = &s->pending[i];
        if (strcmp(p->ns, ns) != 0) {
            s->pending[keep++] = *p;
            continue;
        }
        fake_kv_t *d = find(s->durable, s->n_durable, p->ns, p->key);
        if (d == NULL) {
            if (s->n_durable >= FAKE_STORE_MAX) {
                return ESP_ERR_NO_MEM;
            }
            d = &s->durable[s->n_durable++];
        }
        *d = *p;
    }
    s->n_pending = keep;
    s->commits++;
    return ESP_OK;
}

const mdm_store_ops_t fake_store_ops = {
    .open = st_open,
    .close = st_close,
    .get_str = st_get_str,
    .set_str = st_set_str,
    .get_u32 = st_get_u32,
    .set_u32 = st_set_u32,
    .erase = st_erase,
    .commit = st_commit,
};

void fake_store_reset(fake_store_t *s)
{
    memset(s, 0, sizeof(*s));
}

void fake_store_provision(fake_store_t *s, const char *secret)
{
    fake_store_reset(s);
    st_set_str(s, "prov", "device_key", "abcd1234");
    st_set_str(s, "prov", "client_id", FAKE_CLIENT_ID);
    st_set_str(s, "prov", "client_secret", secret);
    st_set_str(s, "prov", "token_url", "http://kc/realms/iot/protocol/openid-connect/token");
    st_set_str(s, "prov", "base_url", "http://mdm/");
    st_commit(s, "prov");
    s->commits = 0;
}

void fake_store_crash(fake_store_t *s)
{
    s->n_pending = 0;
}

const char *fake_store_get(fake_store_t *s, const char *ns, const char *key)
{
    fake_kv_t *kv = find(s->durable, s->n_durable, ns, key);
    return kv != NULL && !kv->erased && !kv->is_u32 ? kv->str : "";
}

/* ================================================================ server */

void fake_server_reset(fake_server_t *s, fake_mode_t mode, const char *secret)
{
    memset(s, 0, sizeof(*s));
    s->mode = mode;
    strcpy(s->main, secret);
    strcpy(s->config, "{\"interval\":60}");
    s->state_status = 204;
    s->coredump_status = 201;
}

bool fake_server_accepts(const fake_server_t *s, const char *secret)
{
    if (s->client_deleted || secret[0] == '\0') {
        return false;
    }
    return strcmp(secret, s->main) == 0 || (s->rotated[0] != '\0' && strcmp(secret, s->rotated) == 0);
}

void fake_server_trigger(fake_server_t *s)
{
    s->pending = true;
}

void fake_server_timeout(fake_server_t *s)
{
    if (!s->pending) {
        return;
    }
    s->pending = false;
    if (s->mode == FAKE_RESTORE && s->generated[0] != '\0') {
        strcpy(s->main, s->sealed); /* the unconfirmed secret stops working */
        s->generated[0] = '\0';
    }
}

static void reply(const mdm_http_req_t *req, mdm_http_resp_t *resp, int status, const char *body)
{
    resp->status = status;
    size_t n = strlen(body);
    if (req->buf != NULL && req->sink == NULL) {
        size_t room = req->cap - 1;
        resp->too_long = n > room;
        resp->len = n > room ? room : n;
        memcpy(req->buf, body, resp->len);
        req->buf[resp->len] = '\0';
    }
    resp->content_length = (int64_t)n;
}

static bool form_value(const char *body, const char *name, char *out, size_t cap)
{
    size_t nl = strlen(name);
    for (const char *p = body; p != NULL && *p; p = strchr(p, '&') ? strchr(p, '&') + 1 : NULL) {
        if (strncmp(p, name, nl) == 0 && p[nl] == '=') {
            size_t o = 0;
            for (const char *v = p + nl + 1; *v && *v != '&' && o + 1 < cap; v++) {
                if (*v == '%' && isxdigit((unsigned char)v[1]) && isxdigit((unsigned char)v[2])) {
                    char hex[3] = {v[1], v[2], 0};
                    out[o++] = (char)strtol(hex, NULL, 16);
                    v += 2;
                } else {
                    out[o++] = *v;
                }
            }
            out[o] = '\0';
            return true;
        }
    }
    return false;
}

/* The secret a bearer token was issued for, or NULL. */
static const char *token_secret(const fake_server_t *s, const char *bearer)
{
    int n;
    if (bearer == NULL || sscanf(bearer, "tok-%d", &n) != 1 || n < 0 || n >= s->tokens_issued || n >= 256) {
        return NULL;
    }
    return s->token_secret[n];
}

static bool sha_of(const char *secret, const char *hex)
{
    char sum[MDM_SHA_HEX];
    return secret[0] != '\0' && mdm_sha256_hex(secret, strlen(secret), sum) == ESP_OK && strcmp(sum, hex) == 0;
}

static esp_err_t serve_firmware(fake_server_t *s, const mdm_http_req_t *req, mdm_http_resp_t *resp)
{
    s->downloads++;
    char etag[80];
    if (s->etag_override[0] != '\0') {
        strcpy(etag, s->etag_override);
    } else {
        snprintf(etag, sizeof(etag), "\"%s\"", s->fw_sha);
    }
    strcpy(resp->etag, etag);
    s->last_range[0] = s->last_if_range[0] = '\0';
    size_t start = 0;
    resp->status = 200;
    if (req->range != NULL) {
        snprintf(s->last_range, sizeof(s->last_range), "%s", req->range);
        if (req->if_range != NULL) {
            snprintf(s->last_if_range, sizeof(s->last_if_range), "%s", req->if_range);
        }
        unsigned long from;
        if ((req->if_range == NULL || strcmp(req->if_range, etag) == 0) && sscanf(req->range, "bytes=%lu-", &from) == 1) {
            if (from >= s->fw_len) {
                reply(req, resp, 416, "{}");
                return req->sink != NULL ? req->sink(req->sink_ctx, (const uint8_t *)"{}", 2) : ESP_OK;
            }
            start = from;
            resp->status = 206;
            snprintf(resp->content_range, sizeof(resp->content_range), "bytes %zu-%zu/%zu", start, s->fw_len - 1, s->fw_len);
        }
    }
    resp->content_length = (int64_t)(s->fw_len - start);
    size_t end = s->fw_len;
    bool cut = false;
    if (s->cut_after > 0 && start + s->cut_after < end) {
        end = start + s->cut_after;
        cut = true;
        s->cut_after = 0;
    }
    for (size_t off = start; off < end;) {
        size_t n = end - off < 1000 ? end - off : 1000;
        esp_err_t err = req->sink(req->sink_ctx, s->fw + off, n);
        if (err != ESP_OK) {
            return err;
        }
        resp->len += n;
        off += n;
    }
    return cut ? ESP_ERR_HTTP_INCOMPLETE_DATA : ESP_OK;
}

esp_err_t fake_http(void *ctx, const mdm_http_req_t *req, mdm_http_resp_t *resp)
{
    fake_server_t *s = ctx;
    memset(resp, 0, sizeof(*resp));
    resp->content_length = -1;
    char body[1024];
    const char *path = strstr(req->url, "://");
    path = path != NULL ? strchr(path + 3, '/') : NULL;
    if (path == NULL) {
        return ESP_ERR_HTTP_CONNECT;
    }
    if (strncmp(req->url, "http://kc/", 10) == 0) {
        if (s->keycloak_down) {
            return ESP_ERR_HTTP_CONNECT;
        }
        s->token_requests++;
        char secret[128] = "";
        form_value(req->body != NULL ? req->body : "", "client_secret", secret, sizeof(secret));
        if (!fake_server_accepts(s, secret)) {
            reply(req, resp, 401, "{\"error\":\"invalid_client\"}");
            return ESP_OK;
        }
        int n = s->tokens_issued++ % 256;
        strcpy(s->token_secret[n], secret);
        snprintf(body, sizeof(body), "{\"access_token\":\"tok-%d\",\"expires_in\":300,\"token_type\":\"Bearer\"}", n);
        reply(req, resp, 200, body);
        return ESP_OK;
    }
    if (s->espmdm_down) {
        return ESP_ERR_HTTP_CONNECT;
    }
    const char *tok_secret = token_secret(s, req->bearer);
    if (tok_secret == NULL) {
        reply(req, resp, 401, "{\"status\":401}");
        return ESP_OK;
    }
    if (strcmp(path, "/iot/provisioning") == 0) {
        s->fetches++;
        if (s->pending && s->generated[0] == '\0') {
            snprintf(s->generated, sizeof(s->generated), "gen-%d-secret", ++s->generations);
            if (s->mode == FAKE_RESTORE) {
                strcpy(s->sealed, s->main);
                s->rotated[0] = '\0';
            } else {
                strcpy(s->rotated, s->main);
            }
            strcpy(s->main, s->generated);
        }
        const char *secret = s->pending ? s->generated : s->main;
        snprintf(body, sizeof(body),
                 "{\"device_key\":\"abcd1234\",\"client_id\":\"%s\",\"client_secret\":\"%s\",\"token_url\":\"http://kc/t\","
                 "\"base_url\":\"http://mdm\"%s%s%s}",
                 FAKE_CLIENT_ID, secret, s->mqtt_password[0] ? ",\"mqtt_password\":\"" : "", s->mqtt_password,
                 s->mqtt_password[0] ? "\"" : "");
        reply(req, resp, 200, body);
        return ESP_OK;
    }
    if (strcmp(path, "/iot/provisioning/ack") == 0) {
        s->acks++;
        char hex[65] = "";
        const char *p = req->body != NULL ? strstr(req->body, "\"client_secret_sha256\":\"") : NULL;
        if (p != NULL) {
            snprintf(hex, sizeof(hex), "%.64s", p + 24);
        }
        if (s->pending && sha_of(s->generated, hex)) {
            s->pending = false;
            strcpy(s->completed_with, s->generated);
            s->generated[0] = '\0';
            s->rotated[0] = '\0'; /* grace: the rotated secret is invalidated */
            s->acks_204++;
            reply(req, resp, 204, "");
        } else if (sha_of(s->completed_with, hex)) {
            s->acks_204++;
            reply(req, resp, 204, "");
        } else {
            s->acks_409++;
            reply(req, resp, 409, "{\"status\":409}");
        }
        return ESP_OK;
    }
    if (strcmp(path, "/iot/config") == 0) {
        s->configs++;
        /* restore: a token of the new secret completes the rotation (the iat rule). */
        if (s->mode == FAKE_RESTORE && s->pending && s->generated[0] != '\0' && strcmp(tok_secret, s->generated) == 0) {
            s->pending = false;
            strcpy(s->completed_with, s->generated);
            s->generated[0] = '\0';
        }
        reply(req, resp, 200, s->config);
        return ESP_OK;
    }
    if (strcmp(path, "/iot/firmware-version") == 0) {
        if (s->fw == NULL) {
            reply(req, resp, 200, "{\"firmware_version\":null}");
        } else if (s->version_has_sha) {
            snprintf(body, sizeof(body), "{\"firmware_version\":\"%s\",\"sha256\":\"%s\"}", s->fw_version, s->fw_sha);
            reply(req, resp, 200, body);
        } else {
            snprintf(body, sizeof(body), "{\"firmware_version\":\"%s\"}", s->fw_version);
            reply(req, resp, 200, body);
        }
        return ESP_OK;
    }
    if (strcmp(path, "/iot/firmware") == 0) {
        return serve_firmware(s, req, resp);
    }
    if (strcmp(path, "/iot/state") == 0) {
        s->reports++;
        reply(req, resp, s->state_status, s->state_status == 404 ? "{\"status\":404}" : "");
        return ESP_OK;
    }
    if (strcmp(path, "/iot/coredump") == 0) {
        s->dumps++;
        uint8_t piece[512];
        size_t got = 0;
        for (;;) {
            int n = req->source(req->source_ctx, piece, sizeof(piece));
            if (n < 0) {
                return ESP_FAIL;
            }
            if (n == 0) {
                break;
            }
            got += (size_t)n;
            if (got >= req->source_len) {
                break;
            }
        }
        s->dump_received = got;
        reply(req, resp, s->coredump_status, s->coredump_status == 201 ? "{\"id\":\"42\"}" : "{}");
        return ESP_OK;
    }
    reply(req, resp, 404, "{\"status\":404}");
    return ESP_OK;
}

/* ================================================================ port */

static esp_err_t fp_init(void *ctx, const espmdm_config_t *cfg, const char *fv, const char *dir)
{
    return ESP_OK;
}

static esp_err_t fp_net_up(void *ctx, const char *ssid, const char *pw, uint32_t t)
{
    return ESP_OK;
}

static esp_err_t fp_app_info(void *ctx, mdm_app_info_t *out)
{
    fake_port_t *p = ctx;
    memset(out, 0, sizeof(*out));
    strcpy(out->version, p->running);
    strcpy(out->partition, p->state != 0 ? "ota_1" : "ota_0");
    out->ota_state = p->state == 2 ? ESPMDM_OTA_STATE_PENDING_VERIFY : ESPMDM_OTA_STATE_VALID;
    return ESP_OK;
}

static esp_err_t fp_ota_begin(void *ctx, uint32_t size, uint32_t offset)
{
    fake_port_t *p = ctx;
    if (size > sizeof(p->slot) || offset > p->slot_len) {
        return size > sizeof(p->slot) ? ESP_ERR_INVALID_SIZE : ESP_ERR_INVALID_STATE;
    }
    p->size = size;
    p->pos = offset;
    p->writing = true;
    if (offset == 0) {
        p->slot_len = 0;
    }
    return ESP_OK;
}

static esp_err_t fp_ota_write(void *ctx, const void *data, size_t len)
{
    fake_port_t *p = ctx;
    if (!p->writing || p->pos + len > p->size) {
        return ESP_ERR_INVALID_STATE;
    }
    memcpy(p->slot + p->pos, data, len);
    p->pos += (uint32_t)len;
    if (p->pos > p->slot_len) {
        p->slot_len = p->pos;
    }
    return ESP_OK;
}

static esp_err_t fp_ota_flush(void *ctx)
{
    return ESP_OK;
}

static esp_err_t fp_ota_read(void *ctx, uint32_t off, void *buf, size_t len)
{
    fake_port_t *p = ctx;
    if (off + len > p->slot_len) {
        return ESP_FAIL;
    }
    memcpy(buf, p->slot + off, len);
    return ESP_OK;
}

static esp_err_t fp_ota_end(void *ctx)
{
    fake_port_t *p = ctx;
    if (!p->writing || p->pos != p->size || p->slot_len < 48 || p->slot[0] != 0xE9) {
        return ESP_FAIL;
    }
    p->writing = false;
    snprintf(p->installed, sizeof(p->installed), "%.31s", (const char *)p->slot + 48);
    p->state = 1;
    return ESP_OK;
}

static void fp_ota_abort(void *ctx)
{
    ((fake_port_t *)ctx)->writing = false;
}

static esp_err_t fp_mark_valid(void *ctx)
{
    fake_port_t *p = ctx;
    p->marked_valid++;
    p->state = 0;
    return ESP_OK;
}

static esp_err_t fp_dump_size(void *ctx, uint32_t *size)
{
    fake_port_t *p = ctx;
    *size = p->dump_len;
    return p->dump_len > 0 ? ESP_OK : ESP_ERR_NOT_FOUND;
}

static esp_err_t fp_dump_read(void *ctx, uint32_t off, void *buf, size_t len)
{
    fake_port_t *p = ctx;
    if (off + len > p->dump_len) {
        return ESP_FAIL;
    }
    memcpy(buf, p->dump + off, len);
    return ESP_OK;
}

static esp_err_t fp_dump_erase(void *ctx)
{
    ((fake_port_t *)ctx)->dump_len = 0;
    return ESP_OK;
}

static esp_reset_reason_t fp_reset_reason(void *ctx)
{
    return ESP_RST_POWERON;
}

static esp_err_t fp_rssi(void *ctx, int *out)
{
    *out = -61;
    return ESP_OK;
}

static void fp_reboot(void *ctx)
{
    ((fake_port_t *)ctx)->reboots++;
}

const mdm_port_ops_t fake_port_ops = {
    .init = fp_init,
    .net_up = fp_net_up,
    .app_info = fp_app_info,
    .ota_begin = fp_ota_begin,
    .ota_write = fp_ota_write,
    .ota_flush = fp_ota_flush,
    .ota_read = fp_ota_read,
    .ota_end = fp_ota_end,
    .ota_abort = fp_ota_abort,
    .ota_mark_valid = fp_mark_valid,
    .coredump_size = fp_dump_size,
    .coredump_read = fp_dump_read,
    .coredump_erase = fp_dump_erase,
    .reset_reason = fp_reset_reason,
    .rssi = fp_rssi,
    .reboot = fp_reboot,
};

void fake_port_reset(fake_port_t *p, const char *version)
{
    memset(p, 0, sizeof(*p));
    snprintf(p->running, sizeof(p->running), "%s", version);
}

void fake_port_boot(fake_port_t *p)
{
    if (p->state == 1) {
        strcpy(p->previous, p->running);
        strcpy(p->running, p->installed);
        p->state = 2;
    } else if (p->state == 2) {
        strcpy(p->running, p->previous); /* booted again unconfirmed: rolled back */
        p->state = 0;
        p->installed[0] = '\0';
    }
    p->writing = false;
}

/* ================================================================ device */

static int64_t dev_now(void *ctx)
{
    return ((fake_device_t *)ctx)->now;
}

static uint32_t dev_random(void *ctx)
{
    fake_device_t *d = ctx;
    d->rnd = d->rnd * 1103515245u + 12345u;
    return d->rnd >> 8;
}

static void dev_post(void *ctx, int32_t id, const void *data, size_t size)
{
    fake_device_t *d = ctx;
    if (d->n_events >= FAKE_EVENTS_MAX) {
        memmove(d->events, d->events + 1, sizeof(d->events[0]) * (FAKE_EVENTS_MAX - 1));
        d->n_events--;
    }
    fake_event_t *e = &d->events[d->n_events++];
    e->id = id;
    memset(e->data, 0, sizeof(e->data));
    if (data != NULL) {
        memcpy(e->data, data, size < sizeof(e->data) ? size : sizeof(e->data));
    }
}

static void dev_drain(void *ctx)
{
}

static void dev_hook(espmdm_step_t step, void *arg)
{
    fake_device_t *d = arg;
    if (d->on_step != NULL) {
        d->on_step(d, step);
    }
    if (step == d->crash_at) {
        d->crash_at = ESPMDM_STEP_COUNT;
        d->crashes++;
        longjmp(d->crash, 1);
    }
}

esp_err_t fake_device_init(fake_device_t *d, fake_store_t *st, fake_server_t *sv, fake_port_t *p)
{
    memset(d, 0, sizeof(*d));
    d->store = st;
    d->server = sv;
    d->port = p;
    d->now = 1000;
    d->rnd = 7;
    d->crash_at = ESPMDM_STEP_COUNT;
    mdm_t *m = &d->m;
    espmdm_config_t cfg = ESPMDM_DEFAULT_CONFIG();
    cfg.backoff_min_ms = 1000;
    cfg.backoff_max_ms = 60000;
    cfg.report_interval_s = 3600;
    cfg.step_hook = dev_hook;
    cfg.step_hook_arg = d;
    m->cfg = cfg;
    strcpy(m->partition_label, "nvs");
    m->cfg.partition_label = m->partition_label;
    m->store = &fake_store_ops;
    m->store_ctx = st;
    m->http = fake_http;
    m->http_ctx = sv;
    m->port = &fake_port_ops;
    m->port_ctx = p;
    m->sys = (mdm_sys_t){.now_ms = dev_now, .random = dev_random, .post = dev_post, .drain = dev_drain, .ctx = d};
    esp_err_t err = mdm_init_buffers(m, CONFIG_ESPMDM_BODY_MAX, CONFIG_ESPMDM_TOKEN_RESPONSE_MAX);
    if (err == ESP_OK) {
        err = m->port->app_info(p, &m->app);
    }
    m->network_up = true;
    return err;
}

void fake_device_free(fake_device_t *d)
{
    mdm_free_buffers(&d->m);
}

int fake_device_count(const fake_device_t *d, int32_t id)
{
    int n = 0;
    for (int i = 0; i < d->n_events; i++) {
        n += d->events[i].id == id;
    }
    return n;
}

const void *fake_device_last(const fake_device_t *d, int32_t id)
{
    for (int i = d->n_events - 1; i >= 0; i--) {
        if (d->events[i].id == id) {
            return d->events[i].data;
        }
    }
    return NULL;
}

void fake_device_run(fake_device_t *d, int64_t budget_ms)
{
    int64_t until = d->now + budget_ms;
    for (int i = 0; i < 1000; i++) {
        int64_t next = mdm_jobs_run(&d->m);
        if (next == INT64_MAX || next > until) {
            return;
        }
        if (next > d->now) {
            d->now = next;
        }
    }
}
