/*
 * The scheduler: a fixed set of jobs, each pending or not, each with its own backoff. The task
 * (espmdm.c) runs the due ones in priority order and sleeps until the next one is due or a
 * nudge arrives. A failed job posts one ESPMDM_EVENT_ERROR and is retried after
 * mdm_backoff_ms(): bounded, jittered, never a spin.
 */
#include <inttypes.h>
#include <string.h>

#include "cJSON.h"
#include "esp_log.h"

#include "mdm.h"

static const char *TAG = "espmdm";

void mdm_job_at(mdm_t *m, mdm_job_id_t id, int64_t due_ms)
{
    mdm_job_t *j = &m->jobs[id];
    if (!j->pending || due_ms < j->due_ms) {
        j->due_ms = due_ms;
    }
    j->pending = true;
}

void mdm_job_now(mdm_t *m, mdm_job_id_t id)
{
    m->jobs[id].attempt = 0;
    m->jobs[id].pending = true;
    m->jobs[id].due_ms = m->sys.now_ms(m->sys.ctx);
}

mdm_res_t mdm_config_run(mdm_t *m, mdm_err_t *e)
{
    char url[MDM_URL_MAX + 32];
    if (!mdm_url(m, "/iot/config", url, sizeof(url))) {
        return mdm_fail(e, ESPMDM_OP_CONFIG, ESP_ERR_INVALID_SIZE, 0, "base_url too long");
    }
    mdm_http_req_t req = {.method = "GET", .url = url, .buf = m->body, .cap = m->body_cap};
    mdm_http_resp_t resp;
    mdm_res_t res = mdm_iot(m, &req, &resp, ESPMDM_OP_CONFIG, e);
    if (res != MDM_DONE) {
        return res;
    }
    if (resp.status != 200) {
        return mdm_fail(e, ESPMDM_OP_CONFIG, ESP_FAIL, resp.status, "config: espmdm answered %d", resp.status);
    }
    if (resp.too_long) {
        return mdm_fail(e, ESPMDM_OP_CONFIG, ESP_ERR_INVALID_SIZE, resp.status, "config: longer than %u bytes",
                        (unsigned)(m->body_cap - 1));
    }
    cJSON *doc = cJSON_ParseWithLength(m->body, resp.len);
    bool object = doc != NULL && (cJSON_IsObject(doc) || cJSON_IsNull(doc));
    cJSON_Delete(doc);
    if (!object) {
        return mdm_fail(e, ESPMDM_OP_CONFIG, ESP_ERR_INVALID_RESPONSE, resp.status, "config: not a JSON object");
    }
    /* Checked in: the running image talks to espmdm (SPEC §14: confirm only after this). */
    res = mdm_ota_checked_in(m, e);
    size_t size = sizeof(espmdm_event_config_t) + resp.len + 1;
    espmdm_event_config_t *ev = malloc(size);
    if (ev == NULL) {
        return mdm_fail(e, ESPMDM_OP_CONFIG, ESP_ERR_NO_MEM, 0, "config: out of memory");
    }
    ev->len = resp.len;
    memcpy(ev->json, m->body, resp.len);
    ev->json[resp.len] = '\0';
    m->sys.post(m->sys.ctx, ESPMDM_EVENT_CONFIG, ev, size);
    free(ev);
    return res;
}

bool mdm_topics(const mdm_t *m, char topics[MDM_TOPIC_COUNT][MDM_TOPIC_MAX])
{
    return mdm_fmt(topics[0], MDM_TOPIC_MAX, "iotsupport/%s/rotation", m->prov.client_id) &&
           mdm_fmt(topics[1], MDM_TOPIC_MAX, "iotsupport/%s/config", m->prov.client_id) &&
           mdm_fmt(topics[2], MDM_TOPIC_MAX, "iotsupport/%s/firmware", m->prov.client_id) &&
           mdm_fmt(topics[3], MDM_TOPIC_MAX, "iotsupport/%s/firmware", m->prov.model_code);
}

bool mdm_topic_kind(const mdm_t *m, const char *topic, size_t len, espmdm_nudge_t *kind)
{
    char topics[MDM_TOPIC_COUNT][MDM_TOPIC_MAX];
    if (!mdm_topics(m, topics)) {
        return false;
    }
    /* Both firmware topics ask the same question: what is my effective firmware now? */
    static const espmdm_nudge_t kinds[MDM_TOPIC_COUNT] = {ESPMDM_NUDGE_ROTATION, ESPMDM_NUDGE_CONFIG,
                                                          ESPMDM_NUDGE_FIRMWARE, ESPMDM_NUDGE_FIRMWARE};
    for (int i = 0; i < MDM_TOPIC_COUNT; i++) {
        if (strlen(topics[i]) == len && memcmp(topics[i], topic, len) == 0) {
            *kind = kinds[i];
            return true;
        }
    }
    return false;
}

void mdm_on_nudge(mdm_t *m, espmdm_nudge_t kind)
{
    switch (kind) {
    case ESPMDM_NUDGE_ROTATION:
        mdm_job_now(m, MDM_JOB_ROTATION);
        break;
    case ESPMDM_NUDGE_CONFIG:
        mdm_job_now(m, MDM_JOB_CONFIG);
        break;
    case ESPMDM_NUDGE_FIRMWARE:
        if (m->cfg.ota_enabled) {
            mdm_job_now(m, MDM_JOB_FIRMWARE);
        }
        break;
    }
}

void mdm_post_nudge(mdm_t *m, espmdm_nudge_t kind, const char *topic, size_t len)
{
    espmdm_event_nudge_t ev = {.kind = kind};
    size_t n = len < sizeof(ev.topic) - 1 ? len : sizeof(ev.topic) - 1;
    memcpy(ev.topic, topic, n);
    ev.topic[n] = '\0';
    m->sys.post(m->sys.ctx, ESPMDM_EVENT_NUDGE, &ev, sizeof(ev));
}

/* Jobs that need the provisioning data, the network and a first token wait for them. */
static bool ready_for(const mdm_t *m, mdm_job_id_t id)
{
    switch (id) {
    case MDM_JOB_PROV:
        return true;
    case MDM_JOB_NETWORK:
        return m->prov_loaded;
    case MDM_JOB_AUTH:
        return m->prov_loaded && m->network_up;
    default:
        return m->prov_loaded && m->network_up && m->booted;
    }
}

static mdm_res_t run_job(mdm_t *m, mdm_job_id_t id, mdm_err_t *e)
{
    switch (id) {
    case MDM_JOB_PROV: {
        mdm_res_t r = mdm_prov_load(m, e);
        if (r == MDM_DONE) {
            mdm_ota_boot(m); /* what the last run's OTA left: its state lives in this partition */
            mdm_job_now(m, MDM_JOB_NETWORK);
            if (m->prov.mqtt_url[0] != '\0') {
                esp_err_t err = mdm_mqtt_start(m);
                if (err != ESP_OK) {
                    mdm_err_t me;
                    mdm_fail(&me, ESPMDM_OP_MQTT, err, 0, "MQTT client: %s", esp_err_to_name(err));
                    mdm_post_error(m, &me, 1, 0);
                }
            }
        }
        return r;
    }
    case MDM_JOB_NETWORK: {
        if (!m->cfg.manage_network || m->port->net_up == NULL) {
            m->network_up = true;
        } else {
            esp_err_t err = m->port->net_up(m->port_ctx, m->prov.wifi_ssid, m->prov.wifi_password,
                                            m->cfg.http_timeout_ms * 3);
            if (err != ESP_OK) {
                return mdm_fail(e, ESPMDM_OP_NETWORK, err, 0, "network: %s", esp_err_to_name(err));
            }
            m->network_up = true;
        }
        mdm_job_now(m, MDM_JOB_AUTH);
        return MDM_DONE;
    }
    case MDM_JOB_AUTH: {
        mdm_res_t r = mdm_auth(m, e);
        if (r == MDM_DONE) {
            /* What a device does at start: its config, then the rest. */
            mdm_job_now(m, MDM_JOB_CONFIG);
            if (m->cfg.coredump_upload) {
                mdm_job_now(m, MDM_JOB_COREDUMP);
            }
            if (m->cfg.ota_enabled) {
                mdm_job_now(m, MDM_JOB_FIRMWARE);
            }
            mdm_job_now(m, MDM_JOB_REPORT);
        }
        return r;
    }
    case MDM_JOB_ACK_PROMOTED:
        return mdm_ack_promoted(m, e);
    case MDM_JOB_ROTATION:
        return mdm_rotation_run(m, e);
    case MDM_JOB_CONFIG:
        return mdm_config_run(m, e);
    case MDM_JOB_FIRMWARE:
        return mdm_ota_run(m, e);
    case MDM_JOB_COREDUMP:
        return mdm_coredump_run(m, e);
    case MDM_JOB_REPORT: {
        mdm_res_t r = mdm_report_run(m, e);
        if (r == MDM_DONE && m->cfg.report_interval_s > 0) {
            mdm_job_at(m, MDM_JOB_REPORT, m->sys.now_ms(m->sys.ctx) + (int64_t)m->cfg.report_interval_s * 1000);
        }
        return r;
    }
    case MDM_JOB_COUNT:
        break;
    }
    return MDM_DONE;
}

int64_t mdm_jobs_run(mdm_t *m)
{
    for (int id = 0; id < MDM_JOB_COUNT && !m->stopping; id++) {
        mdm_job_t *j = &m->jobs[id];
        if (!j->pending || j->due_ms > m->sys.now_ms(m->sys.ctx) || !ready_for(m, (mdm_job_id_t)id)) {
            continue;
        }
        j->pending = false;
        mdm_err_t e = {0};
        mdm_res_t r = run_job(m, (mdm_job_id_t)id, &e);
        if (r == MDM_DONE) {
            j->attempt = 0;
            continue;
        }
        j->attempt++;
        uint32_t delay = mdm_backoff_ms(j->attempt, m->cfg.backoff_min_ms, m->cfg.backoff_max_ms,
                                        m->sys.random(m->sys.ctx));
        if (e.retry_after_ms > delay) {
            delay = e.retry_after_ms < m->cfg.backoff_max_ms ? e.retry_after_ms : m->cfg.backoff_max_ms;
        }
        /* A job scheduled meanwhile (a nudge during the run) keeps its earlier time. */
        mdm_job_at(m, (mdm_job_id_t)id, m->sys.now_ms(m->sys.ctx) + delay);
        if (e.message[0] == '\0') {
            mdm_fail(&e, ESPMDM_OP_NETWORK, ESP_FAIL, 0, "failed");
        }
        mdm_post_error(m, &e, j->attempt, delay);
    }
    int64_t next = INT64_MAX;
    for (int id = 0; id < MDM_JOB_COUNT; id++) {
        if (m->jobs[id].pending && ready_for(m, (mdm_job_id_t)id) && m->jobs[id].due_ms < next) {
            next = m->jobs[id].due_ms;
        }
    }
    ESP_LOGV(TAG, "next job due at %" PRId64, next);
    return next;
}
