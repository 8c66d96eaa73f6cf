/*
 * The public API (espmdm.h) and the component's task: it runs the due jobs (jobs.c), then
 * sleeps until the next one is due or a nudge, a request or a stop wakes it.
 */
#include <stdlib.h>
#include <string.h>

#include "esp_event.h"
#include "esp_log.h"
#include "esp_random.h"
#include "esp_timer.h"
#include "freertos/FreeRTOS.h"
#include "freertos/event_groups.h"
#include "freertos/semphr.h"
#include "freertos/task.h"

#include "mdm.h"

static const char *TAG = "espmdm";

ESP_EVENT_DEFINE_BASE(ESPMDM_EVENT);
/* A base of our own for the drain barrier, so that handlers of ESPMDM_EVENT never see it. */
ESP_EVENT_DEFINE_BASE(ESPMDM_INTERNAL_EVENT);

#define BIT_ROTATION (1u << 0)
#define BIT_CONFIG (1u << 1)
#define BIT_FIRMWARE (1u << 2)
#define BIT_STATE (1u << 3)
#define BIT_STOP (1u << 4)
#define BIT_STOPPED (1u << 5)
#define BIT_ALL (BIT_ROTATION | BIT_CONFIG | BIT_FIRMWARE | BIT_STATE | BIT_STOP)

/* ---------------------------------------------------------------- the system seam */

static int64_t sys_now_ms(void *ctx)
{
    return esp_timer_get_time() / 1000;
}

static uint32_t sys_random(void *ctx)
{
    return esp_random();
}

static void sys_post(void *ctx, int32_t id, const void *data, size_t size)
{
    mdm_t *m = ctx;
    esp_err_t err;
    if (m->cfg.event_loop != NULL) {
        err = esp_event_post_to(m->cfg.event_loop, ESPMDM_EVENT, id, (void *)data, size, pdMS_TO_TICKS(1000));
    } else {
        err = esp_event_post(ESPMDM_EVENT, id, (void *)data, size, pdMS_TO_TICKS(1000));
    }
    if (err != ESP_OK) {
        ESP_LOGW(TAG, "event %s not posted: %s", espmdm_event_name(id), esp_err_to_name(err));
    }
}

static void on_barrier(void *arg, esp_event_base_t base, int32_t id, void *data)
{
    SemaphoreHandle_t done = *(SemaphoreHandle_t *)data;
    xSemaphoreGive(done);
}

/* Posts a barrier behind everything posted so far and waits (bounded) until it is handled. */
static void sys_drain(void *ctx)
{
    mdm_t *m = ctx;
    SemaphoreHandle_t done = xSemaphoreCreateBinary();
    if (done == NULL) {
        return;
    }
    esp_err_t err;
    if (m->cfg.event_loop != NULL) {
        err = esp_event_post_to(m->cfg.event_loop, ESPMDM_INTERNAL_EVENT, 0, &done, sizeof(done), pdMS_TO_TICKS(1000));
    } else {
        err = esp_event_post(ESPMDM_INTERNAL_EVENT, 0, &done, sizeof(done), pdMS_TO_TICKS(1000));
    }
    if (err == ESP_OK) {
        xSemaphoreTake(done, pdMS_TO_TICKS(2000));
    }
    vSemaphoreDelete(done);
}

/* ---------------------------------------------------------------- the task */

void mdm_task_nudge(mdm_t *m, espmdm_nudge_t kind)
{
    static const EventBits_t bits[] = {
        [ESPMDM_NUDGE_ROTATION] = BIT_ROTATION,
        [ESPMDM_NUDGE_CONFIG] = BIT_CONFIG,
        [ESPMDM_NUDGE_FIRMWARE] = BIT_FIRMWARE,
    };
    xEventGroupSetBits(m->events, bits[kind]);
}

static void task_main(void *arg)
{
    mdm_t *m = arg;
    m->started_ms = m->sys.now_ms(m->sys.ctx);
    mdm_job_now(m, MDM_JOB_PROV);
    for (;;) {
        int64_t next = mdm_jobs_run(m);
        TickType_t wait = portMAX_DELAY;
        if (next != INT64_MAX) {
            int64_t ms = next - m->sys.now_ms(m->sys.ctx);
            if (ms < 0) {
                ms = 0;
            }
            if (ms > 3600 * 1000) {
                ms = 3600 * 1000;
            }
            wait = pdMS_TO_TICKS(ms) + 1;
        }
        EventBits_t bits = xEventGroupWaitBits(m->events, BIT_ALL, pdTRUE, pdFALSE, wait);
        if ((bits & BIT_STOP) || m->stopping) {
            break;
        }
        if (bits & BIT_ROTATION) {
            mdm_on_nudge(m, ESPMDM_NUDGE_ROTATION);
        }
        if (bits & BIT_CONFIG) {
            mdm_on_nudge(m, ESPMDM_NUDGE_CONFIG);
        }
        if (bits & BIT_FIRMWARE) {
            mdm_on_nudge(m, ESPMDM_NUDGE_FIRMWARE);
        }
        if (bits & BIT_STATE) {
            mdm_job_now(m, MDM_JOB_REPORT);
        }
    }
    mdm_auth_forget(m);
    xEventGroupSetBits(m->events, BIT_STOPPED);
    vTaskDelete(NULL);
}

/* ---------------------------------------------------------------- the API */

esp_err_t espmdm_init(const espmdm_config_t *cfg, espmdm_handle_t *out)
{
    if (cfg == NULL || out == NULL || cfg->partition_label == NULL || cfg->partition_label[0] == '\0' ||
        strlen(cfg->partition_label) > 16 || cfg->http_timeout_ms == 0 || cfg->backoff_min_ms == 0 ||
        cfg->backoff_max_ms < cfg->backoff_min_ms || cfg->task_stack_size < 4096) {
        return ESP_ERR_INVALID_ARG;
    }
    mdm_t *m = calloc(1, sizeof(*m));
    if (m == NULL) {
        return ESP_ERR_NO_MEM;
    }
    m->cfg = *cfg;
    if (!mdm_copy(m->partition_label, sizeof(m->partition_label), cfg->partition_label) ||
        !mdm_copy(m->factory_version, sizeof(m->factory_version), cfg->factory_version ? cfg->factory_version : "") ||
        !mdm_copy(m->state_dir, sizeof(m->state_dir), cfg->state_dir ? cfg->state_dir : "")) {
        free(m);
        return ESP_ERR_INVALID_ARG;
    }
    m->cfg.partition_label = m->partition_label;
    m->cfg.factory_version = m->factory_version;
    m->cfg.state_dir = m->state_dir;
    m->sys = (mdm_sys_t){.now_ms = sys_now_ms, .random = sys_random, .post = sys_post, .drain = sys_drain, .ctx = m};
    m->store = &mdm_store_nvs_ops;
    m->http = mdm_http_esp;
    m->port = &mdm_port_platform_ops;
    esp_err_t err = ESP_ERR_NO_MEM;
    mdm_http_esp_ctx_t *hc = calloc(1, sizeof(*hc));
    m->http_ctx = hc;
    m->store_ctx = mdm_store_nvs_new(m->partition_label);
    m->port_ctx = mdm_port_platform_new();
    m->events = xEventGroupCreate();
    if (hc == NULL || m->store_ctx == NULL || m->port_ctx == NULL || m->events == NULL) {
        goto fail;
    }
    hc->cert_pem = cfg->cert_pem;
    hc->crt_bundle_attach = cfg->crt_bundle_attach;
    err = mdm_init_buffers(m, CONFIG_ESPMDM_BODY_MAX, CONFIG_ESPMDM_TOKEN_RESPONSE_MAX);
    if (err != ESP_OK) {
        goto fail;
    }
    err = m->port->init(m->port_ctx, &m->cfg, m->factory_version, m->state_dir);
    if (err == ESP_OK) {
        err = m->port->app_info(m->port_ctx, &m->app);
    }
    if (err != ESP_OK) {
        ESP_LOGE(TAG, "platform port: %s", esp_err_to_name(err));
        goto fail;
    }
    if (m->cfg.event_loop != NULL) {
        err = esp_event_handler_register_with(m->cfg.event_loop, ESPMDM_INTERNAL_EVENT, ESP_EVENT_ANY_ID, on_barrier, m);
    } else {
        err = esp_event_handler_register(ESPMDM_INTERNAL_EVENT, ESP_EVENT_ANY_ID, on_barrier, m);
    }
    if (err != ESP_OK) {
        ESP_LOGE(TAG, "event loop: %s (create the default loop first)", esp_err_to_name(err));
        goto fail;
    }
    /* At debug level ESP-IDF logs what the component keeps secret: esp_http_client every
     * request header (the bearer token), nvs_flash every value it writes (the secrets). Those
     * tags stay at info at most, whatever the application asked for. */
    static const char *const secret_tags[] = {"HTTP_CLIENT", "nvs"};
    for (size_t i = 0; i < sizeof(secret_tags) / sizeof(secret_tags[0]); i++) {
        if (esp_log_level_get(secret_tags[i]) > ESP_LOG_INFO) {
            esp_log_level_set(secret_tags[i], ESP_LOG_INFO);
        }
    }
    ESP_LOGI(TAG, "espmdm %s: running %s (%s, %s)", ESPMDM_VERSION, m->app.version, m->app.partition,
             m->app.ota_state == ESPMDM_OTA_STATE_PENDING_VERIFY ? "pending verification" : "valid");
    *out = m;
    return ESP_OK;
fail:
    mdm_free_buffers(m);
    if (m->port_ctx != NULL) {
        mdm_port_platform_free(m->port_ctx);
    }
    mdm_store_nvs_free(m->store_ctx);
    if (m->events != NULL) {
        vEventGroupDelete(m->events);
    }
    free(hc);
    free(m);
    return err;
}

esp_err_t espmdm_start(espmdm_handle_t m)
{
    if (m == NULL) {
        return ESP_ERR_INVALID_ARG;
    }
    if (m->task != NULL) {
        return ESP_ERR_INVALID_STATE;
    }
    m->stopping = false;
    xEventGroupClearBits(m->events, BIT_ALL | BIT_STOPPED);
    TaskHandle_t t = NULL;
    if (xTaskCreate(task_main, "espmdm", m->cfg.task_stack_size, m, m->cfg.task_priority, &t) != pdPASS) {
        return ESP_ERR_NO_MEM;
    }
    m->task = t;
    return ESP_OK;
}

esp_err_t espmdm_request(espmdm_handle_t m, espmdm_request_t what)
{
    if (m == NULL) {
        return ESP_ERR_INVALID_ARG;
    }
    if (m->task == NULL) {
        return ESP_ERR_INVALID_STATE;
    }
    switch (what) {
    case ESPMDM_REQUEST_CONFIG:
        xEventGroupSetBits(m->events, BIT_CONFIG);
        return ESP_OK;
    case ESPMDM_REQUEST_FIRMWARE:
        xEventGroupSetBits(m->events, BIT_FIRMWARE);
        return ESP_OK;
    case ESPMDM_REQUEST_STATE:
        xEventGroupSetBits(m->events, BIT_STATE);
        return ESP_OK;
    case ESPMDM_REQUEST_ROTATION:
        xEventGroupSetBits(m->events, BIT_ROTATION);
        return ESP_OK;
    }
    return ESP_ERR_INVALID_ARG;
}

esp_err_t espmdm_stop(espmdm_handle_t m)
{
    if (m == NULL) {
        return ESP_ERR_INVALID_ARG;
    }
    if (m->task == NULL) {
        return ESP_ERR_INVALID_STATE;
    }
    m->stopping = true;
    xEventGroupSetBits(m->events, BIT_STOP);
    EventBits_t bits = xEventGroupWaitBits(m->events, BIT_STOPPED, pdFALSE, pdTRUE,
                                           pdMS_TO_TICKS(m->cfg.http_timeout_ms + 2000));
    mdm_mqtt_stop(m);
    if (!(bits & BIT_STOPPED)) {
        return ESP_ERR_TIMEOUT;
    }
    m->task = NULL;
    return ESP_OK;
}

esp_err_t espmdm_deinit(espmdm_handle_t m)
{
    if (m == NULL) {
        return ESP_ERR_INVALID_ARG;
    }
    if (m->task != NULL) {
        return ESP_ERR_INVALID_STATE;
    }
    if (m->cfg.event_loop != NULL) {
        esp_event_handler_unregister_with(m->cfg.event_loop, ESPMDM_INTERNAL_EVENT, ESP_EVENT_ANY_ID, on_barrier);
    } else {
        esp_event_handler_unregister(ESPMDM_INTERNAL_EVENT, ESP_EVENT_ANY_ID, on_barrier);
    }
    mdm_free_buffers(m);
    mdm_store_nvs_free(m->store_ctx);
    mdm_port_platform_free(m->port_ctx);
    vEventGroupDelete(m->events);
    free(m->http_ctx);
    mdm_wipe(&m->prov, sizeof(m->prov));
    mdm_wipe(m->rot_fetched, sizeof(m->rot_fetched));
    mdm_wipe(m->rot_token, sizeof(m->rot_token));
    free(m);
    return ESP_OK;
}

esp_err_t espmdm_get_client_id(espmdm_handle_t m, char *buf, size_t len)
{
    if (m == NULL || buf == NULL || len == 0) {
        return ESP_ERR_INVALID_ARG;
    }
    if (!m->prov_loaded) {
        buf[0] = '\0';
        return ESP_ERR_INVALID_STATE;
    }
    return mdm_copy(buf, len, m->prov.client_id) ? ESP_OK : ESP_ERR_INVALID_SIZE;
}
