/*
 * MQTT over esp-mqtt: client id = client_id, a persistent session (QoS 1 nudges sent while the
 * device is offline arrive when it is back), the four topic filters (mdm_topics) subscribed on
 * every connect (so a reconnect re-subscribes, whatever the broker kept), and the optional
 * prov/mqtt_password with username = client_id (SPEC §19). The handler runs in esp-mqtt's task:
 * it only posts events and wakes the component's task (espmdm.c), never does network work.
 */
#include <stdlib.h>
#include <string.h>

#include "esp_log.h"
#include "mqtt_client.h"

#include "mdm.h"

static const char *TAG = "espmdm.mqtt";

typedef struct {
    esp_mqtt_client_handle_t client;
    char topics[MDM_TOPIC_COUNT][MDM_TOPIC_MAX];
    int sub_ids[MDM_TOPIC_COUNT];
    int acked;
    bool connected;
    uint32_t failures;
} mdm_mqtt_t;

/* Implemented in espmdm.c: wakes the task for a nudge. */
void mdm_task_nudge(mdm_t *m, espmdm_nudge_t kind);

static void fill_config(const mdm_t *m, esp_mqtt_client_config_t *c)
{
    memset(c, 0, sizeof(*c));
    c->broker.address.uri = m->prov.mqtt_url;
    c->broker.verification.certificate = m->cfg.cert_pem;
    c->broker.verification.crt_bundle_attach = m->cfg.crt_bundle_attach;
    c->credentials.client_id = m->prov.client_id;
    if (m->prov.mqtt_password[0] != '\0') {
        c->credentials.username = m->prov.client_id;
        c->credentials.authentication.password = m->prov.mqtt_password;
    }
    c->session.disable_clean_session = true;
    c->network.timeout_ms = (int)m->cfg.http_timeout_ms;
    uint32_t reconnect = m->cfg.backoff_max_ms < 10000 ? m->cfg.backoff_max_ms : 10000;
    c->network.reconnect_timeout_ms = (int)reconnect;
    c->buffer.size = 1024;
}

static void on_mqtt(void *arg, esp_event_base_t base, int32_t id, void *data)
{
    mdm_t *m = arg;
    mdm_mqtt_t *q = m->mqtt;
    esp_mqtt_event_handle_t ev = data;
    switch ((esp_mqtt_event_id_t)id) {
    case MQTT_EVENT_CONNECTED: {
        q->connected = true;
        q->failures = 0;
        q->acked = 0;
        /* Posted before the subscriptions: a device that stops here (no SUBACK, no error) shows
         * where it stopped. */
        espmdm_event_connected_t c = {.session_present = ev->session_present != 0};
        m->sys.post(m->sys.ctx, ESPMDM_EVENT_CONNECTED, &c, sizeof(c));
        for (int i = 0; i < MDM_TOPIC_COUNT; i++) {
            q->sub_ids[i] = esp_mqtt_client_subscribe_single(q->client, q->topics[i], 1);
            if (q->sub_ids[i] < 0) {
                /* Not sent (the connection broke, or the outbox is full): said, not silent. The
                 * next connect subscribes again. */
                mdm_err_t e;
                mdm_fail(&e, ESPMDM_OP_MQTT, ESP_FAIL, 0, "MQTT: subscribing to %s failed", q->topics[i]);
                mdm_post_error(m, &e, 1, 0);
            }
        }
        break;
    }
    case MQTT_EVENT_SUBSCRIBED:
        for (int i = 0; i < MDM_TOPIC_COUNT; i++) {
            if (q->sub_ids[i] != ev->msg_id || q->sub_ids[i] <= 0) {
                continue;
            }
            q->sub_ids[i] = -1;
            if (ev->error_handle != NULL && ev->error_handle->error_type == MQTT_ERROR_TYPE_SUBSCRIBE_FAILED) {
                /* A SUBACK with a failure code: the broker's ACL refused this filter. Not in place,
                 * so no ESPMDM_EVENT_SUBSCRIBED for this connection. */
                mdm_err_t e;
                mdm_fail(&e, ESPMDM_OP_MQTT, ESP_FAIL, 0, "MQTT: the broker refused the subscription to %s",
                         q->topics[i]);
                mdm_post_error(m, &e, 1, 0);
            } else if (++q->acked == MDM_TOPIC_COUNT) {
                espmdm_event_subscribed_t sub = {.topics = MDM_TOPIC_COUNT};
                m->sys.post(m->sys.ctx, ESPMDM_EVENT_SUBSCRIBED, &sub, sizeof(sub));
            }
        }
        break;
    case MQTT_EVENT_DATA: {
        espmdm_nudge_t kind;
        /* A long payload arrives in pieces: the topic comes with the first. */
        if (ev->current_data_offset == 0 && ev->topic_len > 0 &&
            mdm_topic_kind(m, ev->topic, (size_t)ev->topic_len, &kind)) {
            mdm_post_nudge(m, kind, ev->topic, (size_t)ev->topic_len);
            mdm_task_nudge(m, kind);
        }
        break;
    }
    case MQTT_EVENT_DISCONNECTED:
    case MQTT_EVENT_ERROR: {
        /* One error per failed attempt: a failed connect also reports a disconnect. */
        if (id == MQTT_EVENT_DISCONNECTED && !q->connected) {
            break;
        }
        q->connected = false;
        q->failures++;
        mdm_err_t e;
        int rc = 0;
        if (id == MQTT_EVENT_ERROR && ev->error_handle != NULL &&
            ev->error_handle->error_type == MQTT_ERROR_TYPE_CONNECTION_REFUSED) {
            rc = ev->error_handle->connect_return_code;
        }
        if (rc != 0) {
            mdm_fail(&e, ESPMDM_OP_MQTT, ESP_FAIL, 0, "MQTT: the broker refused the connection (code %d)", rc);
        } else if (id == MQTT_EVENT_DISCONNECTED) {
            mdm_fail(&e, ESPMDM_OP_MQTT, ESP_FAIL, 0, "MQTT: disconnected from the broker");
        } else {
            mdm_fail(&e, ESPMDM_OP_MQTT, ESP_FAIL, 0, "MQTT: cannot connect to the broker");
        }
        uint32_t reconnect = m->cfg.backoff_max_ms < 10000 ? m->cfg.backoff_max_ms : 10000;
        mdm_post_error(m, &e, q->failures, reconnect);
        break;
    }
    default:
        break;
    }
}

esp_err_t mdm_mqtt_start(mdm_t *m)
{
    if (m->mqtt != NULL) {
        return ESP_OK;
    }
    mdm_mqtt_t *q = calloc(1, sizeof(*q));
    if (q == NULL) {
        return ESP_ERR_NO_MEM;
    }
    if (!mdm_topics(m, q->topics)) {
        free(q);
        return ESP_ERR_INVALID_SIZE;
    }
    esp_mqtt_client_config_t c;
    fill_config(m, &c);
    q->client = esp_mqtt_client_init(&c);
    if (q->client == NULL) {
        free(q);
        return ESP_ERR_NO_MEM;
    }
    m->mqtt = q;
    esp_err_t err = esp_mqtt_client_register_event(q->client, ESP_EVENT_ANY_ID, on_mqtt, m);
    if (err == ESP_OK) {
        err = esp_mqtt_client_start(q->client);
    }
    if (err != ESP_OK) {
        esp_mqtt_client_destroy(q->client);
        free(q);
        m->mqtt = NULL;
        return err;
    }
    ESP_LOGI(TAG, "connecting to the broker as %s", m->prov.client_id);
    return ESP_OK;
}

void mdm_mqtt_password_changed(mdm_t *m)
{
    mdm_mqtt_t *q = m->mqtt;
    if (q == NULL) {
        return;
    }
    esp_mqtt_client_config_t c;
    fill_config(m, &c);
    if (esp_mqtt_set_config(q->client, &c) == ESP_OK) {
        ESP_LOGI(TAG, "MQTT password updated: used from the next connection on");
    }
}

void mdm_mqtt_stop(mdm_t *m)
{
    mdm_mqtt_t *q = m->mqtt;
    if (q == NULL) {
        return;
    }
    esp_mqtt_client_stop(q->client);
    esp_mqtt_client_destroy(q->client);
    free(q);
    m->mqtt = NULL;
}
