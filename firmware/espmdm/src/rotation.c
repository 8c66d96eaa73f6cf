/*
 * The rotation steps of SPEC §4 step 2, on the nudge. The rule under every step: keep the
 * secret that Keycloak accepts, never overwrite the only one that works.
 *
 *   fetch        GET /iot/provisioning                      crash point after_fetch
 *   write_next   client_secret_next := fetched; commit      crash point after_write_next
 *   token_next   a token with the new secret                crash point after_token_next
 *   ack          POST /iot/provisioning/ack (SHA-256)       crash point after_ack
 *   promote      client_secret := next; erase next; commit  crash point after_promote
 *
 * A crash anywhere reboots into the boot slot choice (token.c): current, else next (promoted at
 * once). Only next is ever overwritten, and only after current was accepted for the fetch;
 * current is only replaced by a secret Keycloak accepted.
 */
#include <string.h>

#include "cJSON.h"
#include "esp_log.h"

#include "mdm.h"

static const char *TAG = "espmdm";

static void post_rotation(mdm_t *m, int32_t id, bool changed, bool at_boot, int status)
{
    espmdm_event_rotation_t ev = {.changed = changed, .at_boot = at_boot, .http_status = status};
    m->sys.post(m->sys.ctx, id, &ev, sizeof(ev));
}

mdm_res_t mdm_rot_fetch(mdm_t *m, char *fetched, size_t cap, mdm_err_t *e)
{
    char url[MDM_URL_MAX + 32];
    if (!mdm_url(m, "/iot/provisioning", url, sizeof(url))) {
        return mdm_fail(e, ESPMDM_OP_ROTATION, ESP_ERR_INVALID_SIZE, 0, "base_url too long");
    }
    mdm_http_req_t req = {.method = "GET", .url = url, .buf = m->body, .cap = m->body_cap};
    mdm_http_resp_t resp;
    mdm_res_t res = mdm_iot(m, &req, &resp, ESPMDM_OP_ROTATION, e);
    if (res != MDM_DONE) {
        return res;
    }
    if (resp.status != 200 || resp.too_long) {
        mdm_wipe(m->body, m->body_cap);
        return mdm_fail(e, ESPMDM_OP_ROTATION, ESP_FAIL, resp.status, "rotation fetch: espmdm answered %d%s",
                        resp.status, resp.too_long ? " with a body over the limit" : "");
    }
    cJSON *doc = cJSON_ParseWithLength(m->body, resp.len);
    mdm_wipe(m->body, m->body_cap);
    if (doc == NULL) {
        return mdm_fail(e, ESPMDM_OP_ROTATION, ESP_ERR_INVALID_RESPONSE, resp.status, "rotation fetch: not JSON");
    }
    res = MDM_DONE;
    const cJSON *cid = cJSON_GetObjectItemCaseSensitive(doc, "client_id");
    const cJSON *sec = cJSON_GetObjectItemCaseSensitive(doc, "client_secret");
    const cJSON *mpw = cJSON_GetObjectItemCaseSensitive(doc, "mqtt_password");
    if (!cJSON_IsString(cid) || strcmp(cid->valuestring, m->prov.client_id) != 0) {
        res = mdm_fail(e, ESPMDM_OP_ROTATION, ESP_ERR_INVALID_RESPONSE, resp.status,
                       "rotation fetch: the answer is not for %s", m->prov.client_id);
    } else if (!cJSON_IsString(sec) || sec->valuestring[0] == '\0' || !mdm_copy(fetched, cap, sec->valuestring)) {
        res = mdm_fail(e, ESPMDM_OP_ROTATION, ESP_ERR_INVALID_RESPONSE, resp.status,
                       "rotation fetch: client_secret missing or longer than %u bytes", (unsigned)(cap - 1));
    } else if (cJSON_IsString(mpw) && mpw->valuestring[0] != '\0') {
        /* §19: a broker password delivered with the credentials (devices provisioned before
         * the broker's accounts get theirs this way). Used from the next connection on. */
        bool changed = strcmp(mpw->valuestring, m->prov.mqtt_password) != 0;
        esp_err_t err = mdm_prov_set_mqtt_password(m, mpw->valuestring);
        if (err != ESP_OK) {
            res = mdm_fail(e, ESPMDM_OP_ROTATION, err, 0, "storing mqtt_password: %s", esp_err_to_name(err));
        } else if (changed) {
            mdm_mqtt_password_changed(m);
        }
    }
    if (cJSON_IsString(sec)) {
        mdm_wipe(sec->valuestring, strlen(sec->valuestring));
    }
    if (cJSON_IsString(mpw)) {
        mdm_wipe(mpw->valuestring, strlen(mpw->valuestring));
    }
    cJSON_Delete(doc);
    if (res != MDM_DONE) {
        return res;
    }
    post_rotation(m, ESPMDM_EVENT_ROTATION_FETCHED, strcmp(fetched, m->prov.secret) != 0, false, resp.status);
    mdm_step(m, ESPMDM_STEP_AFTER_FETCH);
    return MDM_DONE;
}

mdm_res_t mdm_rot_write_next(mdm_t *m, const char *fetched, mdm_err_t *e)
{
    if (strcmp(m->prov.secret_next, fetched) != 0) {
        esp_err_t err = mdm_prov_write_next(m, fetched);
        if (err != ESP_OK) {
            return mdm_fail(e, ESPMDM_OP_ROTATION, err, 0, "writing client_secret_next: %s", esp_err_to_name(err));
        }
    }
    mdm_step(m, ESPMDM_STEP_AFTER_WRITE_NEXT);
    return MDM_DONE;
}

mdm_res_t mdm_rot_token_next(mdm_t *m, char *tok, size_t cap, uint32_t *expires_in, bool *refused, mdm_err_t *e)
{
    *refused = false;
    mdm_token_res_t r = mdm_token_request(m, m->prov.secret_next, tok, cap, expires_in, e);
    if (r == MDM_TOKEN_REFUSED) {
        *refused = true;
        e->op = ESPMDM_OP_ROTATION;
        mdm_fmt(e->message, sizeof(e->message), "Keycloak refused the fetched secret (%d)", e->http_status);
        return MDM_RETRY;
    }
    if (r != MDM_TOKEN_OK) {
        e->op = ESPMDM_OP_ROTATION;
        return MDM_RETRY;
    }
    mdm_step(m, ESPMDM_STEP_AFTER_TOKEN_NEXT);
    return MDM_DONE;
}

mdm_res_t mdm_rot_ack(mdm_t *m, const char *tok, const char *secret, int *status, mdm_err_t *e)
{
    char sum[MDM_SHA_HEX];
    esp_err_t err = mdm_sha256_hex(secret, strlen(secret), sum);
    if (err != ESP_OK) {
        return mdm_fail(e, ESPMDM_OP_ROTATION, err, 0, "hashing the secret: %s", esp_err_to_name(err));
    }
    char url[MDM_URL_MAX + 32];
    char body[128];
    if (!mdm_url(m, "/iot/provisioning/ack", url, sizeof(url)) ||
        !mdm_fmt(body, sizeof(body), "{\"client_secret_sha256\":\"%s\"}", sum)) {
        return mdm_fail(e, ESPMDM_OP_ROTATION, ESP_ERR_INVALID_SIZE, 0, "base_url too long");
    }
    mdm_http_req_t req = {
        .method = "POST",
        .url = url,
        .bearer = tok,
        .content_type = "application/json",
        .body = body,
        .body_len = strlen(body),
        .timeout_ms = m->cfg.http_timeout_ms,
        .buf = m->body,
        .cap = m->body_cap,
    };
    mdm_http_resp_t resp;
    err = m->http(m->http_ctx, &req, &resp);
    *status = resp.status;
    if (err != ESP_OK) {
        return mdm_fail(e, ESPMDM_OP_ROTATION, err, resp.status, "ack: espmdm unreachable at %s: %s",
                        m->prov.base_url, esp_err_to_name(err));
    }
    if (resp.status == 204) {
        post_rotation(m, ESPMDM_EVENT_ROTATION_ACKED, false, false, 204);
        mdm_step(m, ESPMDM_STEP_AFTER_ACK);
        return MDM_DONE;
    }
    if (resp.status == 409) {
        return MDM_DONE; /* the caller decides: the fetched secret is not this rotation's */
    }
    e->retry_after_ms = resp.retry_after_s * 1000;
    return mdm_fail(e, ESPMDM_OP_ROTATION, ESP_FAIL, resp.status, "ack: espmdm answered %d", resp.status);
}

mdm_res_t mdm_rot_promote(mdm_t *m, mdm_err_t *e)
{
    esp_err_t err = mdm_prov_promote(m);
    if (err != ESP_OK) {
        return mdm_fail(e, ESPMDM_OP_ROTATION, err, 0, "promoting client_secret_next: %s", esp_err_to_name(err));
    }
    post_rotation(m, ESPMDM_EVENT_PROMOTED, true, false, 0);
    mdm_step(m, ESPMDM_STEP_AFTER_PROMOTE);
    return MDM_DONE;
}

mdm_res_t mdm_rot_discard_next(mdm_t *m, mdm_err_t *e)
{
    esp_err_t err = mdm_prov_erase_next(m);
    if (err != ESP_OK) {
        return mdm_fail(e, ESPMDM_OP_ROTATION, err, 0, "erasing client_secret_next: %s", esp_err_to_name(err));
    }
    return MDM_DONE;
}

/* Acks the secret in the current slot with the cached token (which is current's). 204 and 409
 * both end it: 409 only says no rotation is waiting for this secret. */
static mdm_res_t ack_current(mdm_t *m, mdm_err_t *e)
{
    if (mdm_auth(m, e) != MDM_DONE) {
        return MDM_RETRY;
    }
    int status = 0;
    mdm_res_t res = mdm_rot_ack(m, m->token, m->prov.secret, &status, e);
    if (res == MDM_DONE && status == 401) {
        mdm_auth_forget(m);
        return mdm_fail(e, ESPMDM_OP_ROTATION, ESP_FAIL, 401, "ack: token refused");
    }
    return res;
}

mdm_res_t mdm_ack_promoted(mdm_t *m, mdm_err_t *e)
{
    return ack_current(m, e);
}

mdm_res_t mdm_rotation_run(mdm_t *m, mdm_err_t *e)
{
    /* In the handle (not on the task's stack): a token is up to MDM_TOKEN_MAX bytes. */
    char *fetched = m->rot_fetched;
    char *tok = m->rot_token;
    mdm_res_t res = mdm_rot_fetch(m, fetched, MDM_SECRET_MAX, e);
    if (res != MDM_DONE) {
        goto out;
    }
    if (strcmp(fetched, m->prov.secret) == 0) {
        /* The fetch handed out the secret the device runs on: no rotation waits for another
         * (a leftover next is stale), or one completed except for its ack (a crash between a
         * promotion and its ack). Acking covers both. */
        if (m->prov.secret_next[0] != '\0') {
            res = mdm_rot_discard_next(m, e);
            if (res != MDM_DONE) {
                goto out;
            }
        }
        res = ack_current(m, e);
        goto out;
    }
    res = mdm_rot_write_next(m, fetched, e);
    if (res != MDM_DONE) {
        goto out;
    }
    uint32_t exp = 0;
    bool refused = false;
    res = mdm_rot_token_next(m, tok, MDM_TOKEN_MAX, &exp, &refused, e);
    if (refused) {
        /* The current secret was accepted for the fetch; the new one is not (its attempt timed
         * out and was restored meanwhile): drop it, keep current, wait for the next nudge. */
        mdm_err_t e2 = *e;
        if (mdm_rot_discard_next(m, e) != MDM_DONE) {
            goto out;
        }
        *e = e2;
        mdm_post_error(m, e, 1, 0);
        res = MDM_DONE;
        goto out;
    }
    if (res != MDM_DONE) {
        goto out;
    }
    int status = 0;
    res = mdm_rot_ack(m, tok, m->prov.secret_next, &status, e);
    if (res != MDM_DONE) {
        goto out;
    }
    if (status == 409) {
        /* Not this rotation's secret any more: erase next, keep current, fetch again on the
         * next nudge. */
        res = mdm_rot_discard_next(m, e);
        if (res == MDM_DONE) {
            mdm_err_t info;
            mdm_fail(&info, ESPMDM_OP_ROTATION, ESP_FAIL, 409,
                     "ack refused (409): the fetched secret is no longer this rotation's; kept the current one");
            mdm_post_error(m, &info, 1, 0);
        }
        goto out;
    }
    res = mdm_rot_promote(m, e);
    if (res == MDM_DONE) {
        mdm_auth_keep(m, tok, exp, ESPMDM_SLOT_CURRENT);
        ESP_LOGI(TAG, "rotation complete");
    }
out:
    mdm_wipe(fetched, MDM_SECRET_MAX);
    mdm_wipe(tok, MDM_TOKEN_MAX);
    return res;
}
