/* State reports (SPEC §15): POST /iot/state at start, after an OTA and every
 * report_interval_s. The body holds exactly the members §15 lists (unknown ones are refused
 * by espmdm); optional ones are left out when the platform cannot tell them. */
#include <string.h>

#include "cJSON.h"
#include "esp_idf_version.h"
#include "esp_system.h"

#include "mdm.h"

static const char *reason_name(esp_reset_reason_t r)
{
    switch (r) {
    case ESP_RST_POWERON: return "poweron";
    case ESP_RST_SW: return "sw";
    case ESP_RST_PANIC: return "panic";
    case ESP_RST_INT_WDT:
    case ESP_RST_TASK_WDT:
    case ESP_RST_WDT: return "watchdog";
    case ESP_RST_BROWNOUT: return "brownout";
    case ESP_RST_DEEPSLEEP: return "deepsleep";
    case ESP_RST_EXT: return "external";
    default: return "other";
    }
}

bool mdm_report_body(mdm_t *m, char *out, size_t cap)
{
    cJSON *doc = cJSON_CreateObject();
    if (doc == NULL) {
        return false;
    }
    bool ok = cJSON_AddStringToObject(doc, "firmware_version", m->app.version) != NULL &&
              cJSON_AddNumberToObject(doc, "secure_version", m->app.secure_version) != NULL;
    if (ok && m->app.elf_sha256[0] != '\0') {
        ok = cJSON_AddStringToObject(doc, "app_elf_sha256", m->app.elf_sha256) != NULL;
    }
    if (ok && m->app.partition[0] != '\0') {
        ok = cJSON_AddStringToObject(doc, "partition", m->app.partition) != NULL;
    }
    if (ok) {
        ok = cJSON_AddStringToObject(doc, "ota_state", m->app.ota_state == ESPMDM_OTA_STATE_PENDING_VERIFY
                                                            ? "pending_verify" : "valid") != NULL;
    }
    if (ok && m->ota_target[0] != '\0' && m->ota_result[0] != '\0') {
        cJSON *ota = cJSON_AddObjectToObject(doc, "ota");
        ok = ota != NULL && cJSON_AddStringToObject(ota, "target", m->ota_target) != NULL &&
             cJSON_AddStringToObject(ota, "result", m->ota_result) != NULL;
    }
    if (ok && m->port->reset_reason != NULL) {
        ok = cJSON_AddStringToObject(doc, "reset_reason", reason_name(m->port->reset_reason(m->port_ctx))) != NULL;
    }
    if (ok) {
        ok = cJSON_AddNumberToObject(doc, "uptime_s", (double)(m->sys.now_ms(m->sys.ctx) / 1000)) != NULL;
    }
    if (ok) {
        ok = cJSON_AddNumberToObject(doc, "free_heap", esp_get_free_heap_size()) != NULL;
    }
    int rssi = 0;
    if (ok && m->port->rssi != NULL && m->port->rssi(m->port_ctx, &rssi) == ESP_OK) {
        ok = cJSON_AddNumberToObject(doc, "rssi", rssi) != NULL;
    }
    if (ok) {
        ok = cJSON_AddStringToObject(doc, "idf_version", esp_get_idf_version()) != NULL;
    }
    ok = ok && cJSON_PrintPreallocated(doc, out, (int)cap, false);
    cJSON_Delete(doc);
    return ok;
}

mdm_res_t mdm_report_run(mdm_t *m, mdm_err_t *e)
{
    char url[MDM_URL_MAX + 32];
    char body[1024];
    if (!mdm_url(m, "/iot/state", url, sizeof(url)) || !mdm_report_body(m, body, sizeof(body))) {
        return mdm_fail(e, ESPMDM_OP_STATE, ESP_ERR_INVALID_SIZE, 0, "state report does not fit");
    }
    mdm_http_req_t req = {
        .method = "POST",
        .url = url,
        .content_type = "application/json",
        .body = body,
        .body_len = strlen(body),
        .buf = m->body,
        .cap = m->body_cap,
    };
    mdm_http_resp_t resp;
    mdm_res_t res = mdm_iot(m, &req, &resp, ESPMDM_OP_STATE, e);
    if (res != MDM_DONE) {
        return res;
    }
    if (resp.status != 204 && resp.status != 200) {
        return mdm_fail(e, ESPMDM_OP_STATE, ESP_FAIL, resp.status, "state report: espmdm answered %d%s", resp.status,
                        resp.status == 404 ? " (this espmdm has no /iot/state yet)" : "");
    }
    m->sys.post(m->sys.ctx, ESPMDM_EVENT_STATE_REPORTED, NULL, 0);
    return MDM_DONE;
}
