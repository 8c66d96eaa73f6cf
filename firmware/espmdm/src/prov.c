/*
 * The provisioning partition (SPEC §5) and the two secret slots of the rotation (SPEC §4):
 * prov/client_secret (current) and prov/client_secret_next. Every function that changes a slot
 * commits before it returns, so a crash leaves the partition in one of the states the boot
 * slot choice (token.c, mdm_auth) handles.
 */
#include <string.h>

#include "esp_log.h"
#include "nvs.h"

#include "mdm.h"

static const char *TAG = "espmdm";

/* Reads one string entry. required: absent is an error; a value longer than the buffer is
 * always an error (never cut). */
static mdm_res_t read_str(mdm_t *m, const char *key, char *out, size_t cap, bool required, mdm_err_t *e)
{
    size_t len = cap;
    esp_err_t err = m->store->get_str(m->store_ctx, MDM_NS_PROV, key, out, &len);
    if (err == ESP_ERR_NOT_FOUND || (err == ESP_OK && out[0] == '\0')) {
        out[0] = '\0';
        if (required) {
            return mdm_fail(e, ESPMDM_OP_PROVISIONING, ESP_ERR_NOT_FOUND, 0,
                            "provisioning partition '%s': prov/%s is missing", m->partition_label, key);
        }
        return MDM_DONE;
    }
    if (err == ESP_ERR_INVALID_SIZE) {
        out[0] = '\0';
        return mdm_fail(e, ESPMDM_OP_PROVISIONING, err, 0,
                        "provisioning partition '%s': prov/%s is longer than %u bytes", m->partition_label,
                        key, (unsigned)(cap - 1));
    }
    if (err != ESP_OK) {
        out[0] = '\0';
        return mdm_fail(e, ESPMDM_OP_PROVISIONING, err, 0, "provisioning partition '%s': reading prov/%s: %s",
                        m->partition_label, key, esp_err_to_name(err));
    }
    return MDM_DONE;
}

mdm_res_t mdm_prov_load(mdm_t *m, mdm_err_t *e)
{
    mdm_prov_t *p = &m->prov;
    m->store->close(m->store_ctx);
    esp_err_t err = m->store->open(m->store_ctx);
    if (err == ESP_ERR_NVS_NOT_FOUND || err == ESP_ERR_NOT_FOUND) {
        return mdm_fail(e, ESPMDM_OP_PROVISIONING, err, 0,
                        "provisioning partition '%s' holds no namespace 'prov' (corrupt, erased, or not espmdm's)",
                        m->partition_label);
    }
    if (err != ESP_OK) {
        return mdm_fail(e, ESPMDM_OP_PROVISIONING, err, 0,
                        "provisioning partition '%s' cannot be read: %s (is it flashed? corrupt?)",
                        m->partition_label, esp_err_to_name(err));
    }
    struct {
        const char *key;
        char *out;
        size_t cap;
        bool required;
    } fields[] = {
        {"device_key", p->device_key, sizeof(p->device_key), true},
        {"client_id", p->client_id, sizeof(p->client_id), true},
        {"client_secret", p->secret, sizeof(p->secret), true},
        {MDM_KEY_SECRET_NEXT, p->secret_next, sizeof(p->secret_next), false},
        {"token_url", p->token_url, sizeof(p->token_url), true},
        {"base_url", p->base_url, sizeof(p->base_url), true},
        {"mqtt_url", p->mqtt_url, sizeof(p->mqtt_url), false},
        {"mqtt_password", p->mqtt_password, sizeof(p->mqtt_password), false},
        {"wifi_ssid", p->wifi_ssid, sizeof(p->wifi_ssid), false},
        {"wifi_password", p->wifi_password, sizeof(p->wifi_password), false},
    };
    for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++) {
        if (read_str(m, fields[i].key, fields[i].out, fields[i].cap, fields[i].required, e) != MDM_DONE) {
            return MDM_RETRY;
        }
    }
    if (!mdm_model_code(p->client_id, p->model_code, sizeof(p->model_code))) {
        return mdm_fail(e, ESPMDM_OP_PROVISIONING, ESP_ERR_INVALID_ARG, 0,
                        "provisioning partition '%s': client_id '%s' is not iotdevice-<model>-<key>",
                        m->partition_label, p->client_id);
    }
    size_t n = strlen(p->client_id);
    if (strcmp(p->client_id + n - 8, p->device_key) != 0) {
        return mdm_fail(e, ESPMDM_OP_PROVISIONING, ESP_ERR_INVALID_ARG, 0,
                        "provisioning partition '%s': client_id '%s' does not end with device_key '%s'",
                        m->partition_label, p->client_id, p->device_key);
    }
    /* A leftover equal to the current secret is no second secret. */
    if (strcmp(p->secret_next, p->secret) == 0) {
        p->secret_next[0] = '\0';
    }
    m->prov_loaded = true;
    ESP_LOGI(TAG, "provisioned as %s (next slot %s)", p->client_id, p->secret_next[0] ? "holds a secret" : "empty");
    return MDM_DONE;
}

esp_err_t mdm_prov_write_next(mdm_t *m, const char *secret)
{
    esp_err_t err = m->store->set_str(m->store_ctx, MDM_NS_PROV, MDM_KEY_SECRET_NEXT, secret);
    if (err == ESP_OK) {
        err = m->store->commit(m->store_ctx, MDM_NS_PROV);
    }
    if (err == ESP_OK) {
        mdm_copy(m->prov.secret_next, sizeof(m->prov.secret_next), secret);
    }
    return err;
}

esp_err_t mdm_prov_erase_next(mdm_t *m)
{
    esp_err_t err = m->store->erase(m->store_ctx, MDM_NS_PROV, MDM_KEY_SECRET_NEXT);
    if (err == ESP_OK) {
        err = m->store->commit(m->store_ctx, MDM_NS_PROV);
    }
    if (err == ESP_OK) {
        mdm_wipe(m->prov.secret_next, sizeof(m->prov.secret_next));
    }
    return err;
}

esp_err_t mdm_prov_promote(mdm_t *m)
{
    if (m->prov.secret_next[0] == '\0') {
        return ESP_ERR_INVALID_STATE;
    }
    /* Between the two writes both slots hold the new secret: either state boots. */
    esp_err_t err = m->store->set_str(m->store_ctx, MDM_NS_PROV, "client_secret", m->prov.secret_next);
    if (err == ESP_OK) {
        err = m->store->erase(m->store_ctx, MDM_NS_PROV, MDM_KEY_SECRET_NEXT);
    }
    if (err == ESP_OK) {
        err = m->store->commit(m->store_ctx, MDM_NS_PROV);
    }
    if (err == ESP_OK) {
        memcpy(m->prov.secret, m->prov.secret_next, sizeof(m->prov.secret));
        mdm_wipe(m->prov.secret_next, sizeof(m->prov.secret_next));
    }
    return err;
}

esp_err_t mdm_prov_set_mqtt_password(mdm_t *m, const char *value)
{
    if (strcmp(value, m->prov.mqtt_password) == 0) {
        return ESP_OK;
    }
    if (strlen(value) >= sizeof(m->prov.mqtt_password)) {
        return ESP_ERR_INVALID_SIZE;
    }
    esp_err_t err = m->store->set_str(m->store_ctx, MDM_NS_PROV, "mqtt_password", value);
    if (err == ESP_OK) {
        err = m->store->commit(m->store_ctx, MDM_NS_PROV);
    }
    if (err == ESP_OK) {
        mdm_copy(m->prov.mqtt_password, sizeof(m->prov.mqtt_password), value);
    }
    return err;
}
