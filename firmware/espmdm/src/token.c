/*
 * Tokens: the client-credentials grant at token_url, cached and renewed before expiry, and the
 * boot slot choice of SPEC §4 step 1: current; if Keycloak refuses it, next; if only next works,
 * promote it at once (commit) and ack it.
 */
#include <stdlib.h>
#include <string.h>

#include "cJSON.h"
#include "esp_log.h"

#include "mdm.h"

static const char *TAG = "espmdm";

/* Renew this long before the token expires (a quarter of its life, at most 30 s). */
static int64_t renew_margin_ms(uint32_t expires_in_s)
{
    int64_t life = (int64_t)expires_in_s * 1000;
    int64_t margin = life / 4;
    return margin > 30000 ? 30000 : margin;
}

mdm_token_res_t mdm_token_request(mdm_t *m, const char *secret, char *out, size_t cap,
                                  uint32_t *expires_in_s, mdm_err_t *e)
{
    if (m->stopping) {
        mdm_fail(e, ESPMDM_OP_TOKEN, ESP_ERR_INVALID_STATE, 0, "stopping");
        return MDM_TOKEN_UNAVAILABLE;
    }
    char form[512];
    if (!mdm_form_append(form, sizeof(form), "grant_type", "client_credentials", true) ||
        !mdm_form_append(form, sizeof(form), "client_id", m->prov.client_id, false) ||
        !mdm_form_append(form, sizeof(form), "client_secret", secret, false)) {
        mdm_wipe(form, sizeof(form));
        mdm_fail(e, ESPMDM_OP_TOKEN, ESP_ERR_INVALID_SIZE, 0, "token request does not fit");
        return MDM_TOKEN_UNAVAILABLE;
    }
    mdm_http_req_t req = {
        .method = "POST",
        .url = m->prov.token_url,
        .content_type = "application/x-www-form-urlencoded",
        .body = form,
        .body_len = strlen(form),
        .timeout_ms = m->cfg.http_timeout_ms,
        .buf = m->tokbuf,
        .cap = m->tokbuf_cap,
    };
    mdm_http_resp_t resp;
    esp_err_t err = m->http(m->http_ctx, &req, &resp);
    mdm_wipe(form, sizeof(form));
    mdm_token_res_t res = MDM_TOKEN_UNAVAILABLE;
    if (err != ESP_OK) {
        mdm_fail(e, ESPMDM_OP_TOKEN, err, resp.status, "Keycloak unreachable at %s: %s", m->prov.token_url,
                 esp_err_to_name(err));
        goto out;
    }
    if (resp.status == 400 || resp.status == 401) {
        /* invalid_client: the secret (or the client) is not accepted. */
        mdm_fail(e, ESPMDM_OP_TOKEN, ESP_FAIL, resp.status, "Keycloak refused the secret (%d)", resp.status);
        res = MDM_TOKEN_REFUSED;
        goto out;
    }
    if (resp.status != 200) {
        mdm_fail(e, ESPMDM_OP_TOKEN, ESP_FAIL, resp.status, "Keycloak answered %d", resp.status);
        e->retry_after_ms = resp.retry_after_s * 1000;
        goto out;
    }
    if (resp.too_long) {
        mdm_fail(e, ESPMDM_OP_TOKEN, ESP_ERR_INVALID_SIZE, resp.status,
                 "token response longer than %u bytes", (unsigned)(m->tokbuf_cap - 1));
        goto out;
    }
    cJSON *doc = cJSON_ParseWithLength(m->tokbuf, resp.len);
    if (doc == NULL) {
        mdm_fail(e, ESPMDM_OP_TOKEN, ESP_ERR_INVALID_RESPONSE, resp.status, "token response is not JSON");
        goto out;
    }
    const cJSON *at = cJSON_GetObjectItemCaseSensitive(doc, "access_token");
    const cJSON *exp = cJSON_GetObjectItemCaseSensitive(doc, "expires_in");
    if (!cJSON_IsString(at) || at->valuestring[0] == '\0' || !cJSON_IsNumber(exp) || exp->valuedouble < 1) {
        mdm_fail(e, ESPMDM_OP_TOKEN, ESP_ERR_INVALID_RESPONSE, resp.status,
                 "token response lacks access_token or expires_in");
    } else if (!mdm_copy(out, cap, at->valuestring)) {
        mdm_fail(e, ESPMDM_OP_TOKEN, ESP_ERR_INVALID_SIZE, resp.status, "access token longer than %u bytes",
                 (unsigned)(cap - 1));
    } else {
        *expires_in_s = exp->valuedouble > 86400 ? 86400 : (uint32_t)exp->valuedouble;
        res = MDM_TOKEN_OK;
    }
    if (cJSON_IsString(at)) {
        mdm_wipe(at->valuestring, strlen(at->valuestring));
    }
    cJSON_Delete(doc);
out:
    mdm_wipe(m->tokbuf, m->tokbuf_cap);
    return res;
}

void mdm_auth_keep(mdm_t *m, const char *token, uint32_t expires_in_s, espmdm_slot_t slot)
{
    if (token != m->token) {
        mdm_copy(m->token, sizeof(m->token), token);
    }
    m->token_slot = slot;
    m->token_renew_ms = m->sys.now_ms(m->sys.ctx) + (int64_t)expires_in_s * 1000 - renew_margin_ms(expires_in_s);
    espmdm_event_token_t ev = {.slot = slot, .expires_in_s = expires_in_s};
    m->sys.post(m->sys.ctx, ESPMDM_EVENT_TOKEN, &ev, sizeof(ev));
    if (!m->booted) {
        m->booted = true;
        espmdm_event_boot_t b = {.slot = slot, .ota_state = m->app.ota_state};
        mdm_copy(b.firmware_version, sizeof(b.firmware_version), m->app.version);
        mdm_copy(b.partition, sizeof(b.partition), m->app.partition);
        mdm_copy(b.client_id, sizeof(b.client_id), m->prov.client_id);
        m->sys.post(m->sys.ctx, ESPMDM_EVENT_BOOT, &b, sizeof(b));
    }
}

void mdm_auth_forget(mdm_t *m)
{
    mdm_wipe(m->token, sizeof(m->token));
    m->token_renew_ms = 0;
}

mdm_res_t mdm_auth(mdm_t *m, mdm_err_t *e)
{
    if (m->token[0] != '\0' && m->sys.now_ms(m->sys.ctx) < m->token_renew_ms) {
        return MDM_DONE;
    }
    mdm_auth_forget(m);
    uint32_t exp = 0;
    mdm_token_res_t r = mdm_token_request(m, m->prov.secret, m->token, sizeof(m->token), &exp, e);
    if (r == MDM_TOKEN_OK) {
        mdm_auth_keep(m, m->token, exp, ESPMDM_SLOT_CURRENT);
        return MDM_DONE;
    }
    if (r == MDM_TOKEN_UNAVAILABLE) {
        return MDM_RETRY; /* nothing learnt: never conclude a secret is dead from a silence */
    }
    if (m->prov.secret_next[0] == '\0') {
        return mdm_fail(e, ESPMDM_OP_TOKEN, ESP_FAIL, e->http_status,
                        "Keycloak refused client_secret (%d) and client_secret_next is empty", e->http_status);
    }
    int first = e->http_status;
    r = mdm_token_request(m, m->prov.secret_next, m->token, sizeof(m->token), &exp, e);
    if (r == MDM_TOKEN_UNAVAILABLE) {
        return MDM_RETRY;
    }
    if (r == MDM_TOKEN_REFUSED) {
        mdm_auth_forget(m);
        return mdm_fail(e, ESPMDM_OP_TOKEN, ESP_FAIL, e->http_status,
                        "Keycloak refused both secrets (client_secret %d, client_secret_next %d)", first,
                        e->http_status);
    }
    /* Only next works: promote it at once, then ack it (SPEC §4 step 1). */
    esp_err_t err = mdm_prov_promote(m);
    if (err != ESP_OK) {
        mdm_auth_forget(m);
        return mdm_fail(e, ESPMDM_OP_PROVISIONING, err, 0, "promoting client_secret_next: %s", esp_err_to_name(err));
    }
    ESP_LOGI(TAG, "only client_secret_next was accepted: promoted it");
    mdm_auth_keep(m, m->token, exp, ESPMDM_SLOT_NEXT);
    espmdm_event_rotation_t ev = {.at_boot = true};
    m->sys.post(m->sys.ctx, ESPMDM_EVENT_PROMOTED, &ev, sizeof(ev));
    mdm_step(m, ESPMDM_STEP_BOOT_AFTER_PROMOTE);
    mdm_job_now(m, MDM_JOB_ACK_PROMOTED);
    return MDM_DONE;
}

mdm_res_t mdm_iot(mdm_t *m, mdm_http_req_t *req, mdm_http_resp_t *resp, espmdm_op_t op, mdm_err_t *e)
{
    for (int round = 0; round < 2; round++) {
        if (m->stopping) {
            return mdm_fail(e, op, ESP_ERR_INVALID_STATE, 0, "stopping");
        }
        if (mdm_auth(m, e) != MDM_DONE) {
            return MDM_RETRY;
        }
        req->bearer = m->token;
        if (req->timeout_ms == 0) {
            req->timeout_ms = m->cfg.http_timeout_ms;
        }
        esp_err_t err = m->http(m->http_ctx, req, resp);
        req->bearer = NULL;
        if (err != ESP_OK) {
            return mdm_fail(e, op, err, resp->status, "espmdm unreachable at %s: %s", m->prov.base_url,
                            esp_err_to_name(err));
        }
        if (resp->status == 401 && round == 0) {
            mdm_auth_forget(m); /* expired or revoked early: once more with a fresh token */
            continue;
        }
        if (resp->status == 429 || resp->status == 503) {
            e->retry_after_ms = resp->retry_after_s * 1000;
        }
        return MDM_DONE;
    }
    return MDM_DONE;
}
