/* Core dumps (SPEC §17): a dump a crash left in the port's core-dump storage is uploaded raw
 * (POST /iot/coredump) and erased only after the 201. */
#include <stdio.h>
#include <string.h>

#include "cJSON.h"
#include "esp_log.h"

#include "mdm.h"

static const char *TAG = "espmdm";

typedef struct {
    mdm_t *m;
    uint32_t offset;
    uint32_t size;
} dump_src_t;

static int dump_read(void *ctx, uint8_t *buf, size_t cap)
{
    dump_src_t *s = ctx;
    size_t n = s->size - s->offset < cap ? s->size - s->offset : cap;
    if (n == 0) {
        return 0;
    }
    if (s->m->port->coredump_read(s->m->port_ctx, s->offset, buf, n) != ESP_OK) {
        return -1;
    }
    s->offset += (uint32_t)n;
    return (int)n;
}

mdm_res_t mdm_coredump_run(mdm_t *m, mdm_err_t *e)
{
    uint32_t size = 0;
    esp_err_t err = m->port->coredump_size(m->port_ctx, &size);
    if (err == ESP_ERR_NOT_FOUND || (err == ESP_OK && size == 0)) {
        return MDM_DONE;
    }
    if (err != ESP_OK) {
        return mdm_fail(e, ESPMDM_OP_COREDUMP, err, 0, "reading the core dump: %s", esp_err_to_name(err));
    }
    if (mdm_auth(m, e) != MDM_DONE) {
        return MDM_RETRY;
    }
    char url[MDM_URL_MAX + 32];
    if (!mdm_url(m, "/iot/coredump", url, sizeof(url))) {
        return mdm_fail(e, ESPMDM_OP_COREDUMP, ESP_ERR_INVALID_SIZE, 0, "base_url too long");
    }
    dump_src_t src = {.m = m, .size = size};
    mdm_http_req_t req = {
        .method = "POST",
        .url = url,
        .bearer = m->token,
        .content_type = "application/octet-stream",
        .source = dump_read,
        .source_ctx = &src,
        .source_len = size,
        .timeout_ms = m->cfg.http_timeout_ms,
        .buf = m->body,
        .cap = m->body_cap,
    };
    mdm_http_resp_t resp;
    err = m->http(m->http_ctx, &req, &resp);
    if (err != ESP_OK) {
        return mdm_fail(e, ESPMDM_OP_COREDUMP, err, resp.status, "core dump upload: espmdm unreachable: %s",
                        esp_err_to_name(err));
    }
    if (resp.status == 401) {
        mdm_auth_forget(m);
    }
    if (resp.status == 413) {
        /* Larger than espmdm takes: no retry will change that. */
        m->port->coredump_erase(m->port_ctx);
        mdm_fail(e, ESPMDM_OP_COREDUMP, ESP_ERR_INVALID_SIZE, 413,
                 "core dump of %u bytes refused as too large (413): erased", (unsigned)size);
        mdm_post_error(m, e, 1, 0);
        return MDM_DONE;
    }
    if (resp.status != 201) {
        e->retry_after_ms = resp.retry_after_s * 1000;
        return mdm_fail(e, ESPMDM_OP_COREDUMP, ESP_FAIL, resp.status, "core dump upload: espmdm answered %d",
                        resp.status);
    }
    espmdm_event_coredump_t ev = {.size = size};
    cJSON *doc = resp.too_long ? NULL : cJSON_ParseWithLength(m->body, resp.len);
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(doc, "id");
    if (cJSON_IsString(id)) {
        mdm_copy(ev.id, sizeof(ev.id), id->valuestring);
    } else if (cJSON_IsNumber(id)) {
        snprintf(ev.id, sizeof(ev.id), "%.0f", id->valuedouble);
    }
    cJSON_Delete(doc);
    err = m->port->coredump_erase(m->port_ctx);
    if (err != ESP_OK) {
        return mdm_fail(e, ESPMDM_OP_COREDUMP, err, 201, "erasing the uploaded core dump: %s", esp_err_to_name(err));
    }
    ESP_LOGI(TAG, "core dump of %u bytes uploaded as %s", (unsigned)size, ev.id);
    m->sys.post(m->sys.ctx, ESPMDM_EVENT_COREDUMP_UPLOADED, &ev, sizeof(ev));
    return MDM_DONE;
}
