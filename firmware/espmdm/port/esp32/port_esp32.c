/*
 * The ESP32 port: esp_ota_* with the bootloader's rollback (enable
 * CONFIG_BOOTLOADER_APP_ROLLBACK_ENABLE), the core-dump partition, Wi-Fi station, esp_restart.
 * NOT COMPILED on espmdm's build machines (no ESP32 toolchain there): everything it does not
 * have to do is in the shared, host-tested code. Kept to thin calls of ESP-IDF's own APIs.
 */
#include <stdlib.h>
#include <string.h>

#include "esp_app_desc.h"
#include "esp_check.h"
#include "esp_core_dump.h"
#include "esp_flash.h"
#include "esp_netif.h"
#include "esp_ota_ops.h"
#include "esp_system.h"
#include "esp_wifi.h"
#include "freertos/FreeRTOS.h"
#include "freertos/event_groups.h"

#include "port.h"

typedef struct {
    const esp_partition_t *target;
    esp_ota_handle_t ota;
    EventGroupHandle_t net;
} esp32_port_t;

void *mdm_port_platform_new(void) { return calloc(1, sizeof(esp32_port_t)); }
void mdm_port_platform_free(void *ctx) { free(ctx); }

static esp_err_t p_init(void *ctx, const espmdm_config_t *cfg, const char *fv, const char *dir) { return ESP_OK; }

static void on_wifi(void *arg, esp_event_base_t base, int32_t id, void *data)
{
    esp32_port_t *p = arg;
    if (base == WIFI_EVENT && (id == WIFI_EVENT_STA_START || id == WIFI_EVENT_STA_DISCONNECTED)) {
        esp_wifi_connect(); /* the station reconnects by itself from here on */
    } else if (base == IP_EVENT && id == IP_EVENT_STA_GOT_IP) {
        xEventGroupSetBits(p->net, BIT0);
    }
}

static esp_err_t p_net_up(void *ctx, const char *ssid, const char *password, uint32_t timeout_ms)
{
    esp32_port_t *p = ctx;
    if (p->net == NULL) {
        wifi_init_config_t init = WIFI_INIT_CONFIG_DEFAULT();
        wifi_config_t wc = {0};
        strlcpy((char *)wc.sta.ssid, ssid, sizeof(wc.sta.ssid));
        strlcpy((char *)wc.sta.password, password, sizeof(wc.sta.password));
        if ((p->net = xEventGroupCreate()) == NULL) {
            return ESP_ERR_NO_MEM;
        }
        ESP_RETURN_ON_ERROR(esp_netif_init(), "espmdm", "netif");
        esp_netif_create_default_wifi_sta();
        ESP_RETURN_ON_ERROR(esp_wifi_init(&init), "espmdm", "wifi init");
        ESP_RETURN_ON_ERROR(esp_event_handler_register(WIFI_EVENT, ESP_EVENT_ANY_ID, on_wifi, p), "espmdm", "wifi ev");
        ESP_RETURN_ON_ERROR(esp_event_handler_register(IP_EVENT, IP_EVENT_STA_GOT_IP, on_wifi, p), "espmdm", "ip ev");
        ESP_RETURN_ON_ERROR(esp_wifi_set_mode(WIFI_MODE_STA), "espmdm", "wifi mode");
        ESP_RETURN_ON_ERROR(esp_wifi_set_config(WIFI_IF_STA, &wc), "espmdm", "wifi config");
        ESP_RETURN_ON_ERROR(esp_wifi_start(), "espmdm", "wifi start");
    }
    EventBits_t b = xEventGroupWaitBits(p->net, BIT0, pdFALSE, pdTRUE, pdMS_TO_TICKS(timeout_ms));
    return (b & BIT0) ? ESP_OK : ESP_ERR_TIMEOUT;
}

static esp_err_t p_app_info(void *ctx, mdm_app_info_t *out)
{
    const esp_app_desc_t *d = esp_app_get_description();
    const esp_partition_t *run = esp_ota_get_running_partition();
    esp_ota_img_states_t st = ESP_OTA_IMG_VALID;
    memset(out, 0, sizeof(*out));
    strlcpy(out->version, d->version, sizeof(out->version));
    strlcpy(out->partition, run->label, sizeof(out->partition));
    out->secure_version = d->secure_version;
    esp_app_get_elf_sha256(out->elf_sha256, sizeof(out->elf_sha256));
    if (esp_ota_get_state_partition(run, &st) == ESP_OK && st == ESP_OTA_IMG_PENDING_VERIFY) {
        out->ota_state = ESPMDM_OTA_STATE_PENDING_VERIFY;
    }
    return ESP_OK;
}

static esp_err_t p_ota_begin(void *ctx, uint32_t size, uint32_t offset)
{
    esp32_port_t *p = ctx;
    p->target = esp_ota_get_next_update_partition(NULL);
    if (p->target == NULL || size > p->target->size) {
        return ESP_ERR_INVALID_SIZE;
    }
    return offset == 0 ? esp_ota_begin(p->target, size, &p->ota) : esp_ota_resume(p->target, size, offset, &p->ota);
}

static esp_err_t p_ota_write(void *ctx, const void *data, size_t len) { return esp_ota_write(((esp32_port_t *)ctx)->ota, data, len); }
static esp_err_t p_ota_flush(void *ctx) { return ESP_OK; /* flash writes are durable */ }

static esp_err_t p_ota_read(void *ctx, uint32_t off, void *buf, size_t len)
{
    return esp_partition_read(((esp32_port_t *)ctx)->target, off, buf, len);
}

static esp_err_t p_ota_end(void *ctx)
{
    esp32_port_t *p = ctx;
    esp_err_t err = esp_ota_end(p->ota); /* validates the image */
    return err == ESP_OK ? esp_ota_set_boot_partition(p->target) : err;
}

static void p_ota_abort(void *ctx) { esp_ota_abort(((esp32_port_t *)ctx)->ota); }
static esp_err_t p_mark_valid(void *ctx) { return esp_ota_mark_app_valid_cancel_rollback(); }

static esp_err_t p_dump_size(void *ctx, uint32_t *size)
{
    size_t addr = 0, n = 0;
    esp_err_t err = esp_core_dump_image_get(&addr, &n);
    *size = (uint32_t)n;
    return err == ESP_OK ? ESP_OK : ESP_ERR_NOT_FOUND;
}

static esp_err_t p_dump_read(void *ctx, uint32_t off, void *buf, size_t len)
{
    size_t addr = 0, n = 0;
    ESP_RETURN_ON_ERROR(esp_core_dump_image_get(&addr, &n), "espmdm", "core dump");
    return off + len <= n ? esp_flash_read(NULL, buf, addr + off, len) : ESP_ERR_INVALID_SIZE;
}

static esp_err_t p_dump_erase(void *ctx) { return esp_core_dump_image_erase(); }

static esp_reset_reason_t p_reset_reason(void *ctx) { return esp_reset_reason(); }

static esp_err_t p_rssi(void *ctx, int *out)
{
    wifi_ap_record_t ap;
    esp_err_t err = esp_wifi_sta_get_ap_info(&ap);
    *out = ap.rssi;
    return err;
}

static void p_reboot(void *ctx) { esp_restart(); }

const mdm_port_ops_t mdm_port_platform_ops = {
    .init = p_init, .net_up = p_net_up, .app_info = p_app_info,
    .ota_begin = p_ota_begin, .ota_write = p_ota_write, .ota_flush = p_ota_flush, .ota_read = p_ota_read,
    .ota_end = p_ota_end, .ota_abort = p_ota_abort, .ota_mark_valid = p_mark_valid,
    .coredump_size = p_dump_size, .coredump_read = p_dump_read, .coredump_erase = p_dump_erase,
    .reset_reason = p_reset_reason, .rssi = p_rssi, .reboot = p_reboot,
};
