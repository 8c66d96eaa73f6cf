/*
 * The port: what differs between an ESP32 and the linux host build, and nothing else.
 *   port/esp32/  esp_ota_* with the bootloader's rollback, the core-dump partition, Wi-Fi,
 *                esp_restart (not compiled here: no ESP32 toolchain on the build machines);
 *   port/linux/  files in a state directory stand in for the OTA slots, the otadata and the
 *                core-dump partition; "reboot" ends the process (the runner starts it again).
 * The shared code calls the port only through these functions, so the unit tests give it a
 * fake and the linux port is tested on its own.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "esp_err.h"
#include "esp_system.h"
#include "espmdm.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The running image as the bootloader left it. */
typedef struct {
    char version[32];
    char partition[17];          /* running app partition label */
    uint32_t secure_version;
    char elf_sha256[65];         /* hex, "" when unknown */
    espmdm_ota_state_t ota_state;
} mdm_app_info_t;

typedef struct {
    /* Once per process start, before anything else: on linux this is the "bootloader" (a
     * pending_verify image booted a second time without confirmation is rolled back). */
    esp_err_t (*init)(void *ctx, const espmdm_config_t *cfg, const char *factory_version,
                      const char *state_dir);
    esp_err_t (*net_up)(void *ctx, const char *ssid, const char *password, uint32_t timeout_ms);
    esp_err_t (*app_info)(void *ctx, mdm_app_info_t *out);

    /* OTA into the slot that does not run. begin with offset 0 starts afresh (erases); with
     * offset > 0 resumes a download whose first offset bytes are already written. */
    esp_err_t (*ota_begin)(void *ctx, uint32_t image_size, uint32_t offset);
    esp_err_t (*ota_write)(void *ctx, const void *data, size_t len);
    /* Makes what was written durable (before the progress is committed). */
    esp_err_t (*ota_flush)(void *ctx);
    /* Reads back written bytes (the resumed download's hash covers them). */
    esp_err_t (*ota_read)(void *ctx, uint32_t offset, void *buf, size_t len);
    /* Validates the image and sets it to boot next, pending verification. */
    esp_err_t (*ota_end)(void *ctx);
    void (*ota_abort)(void *ctx);
    /* Confirms the running image (cancels the rollback). */
    esp_err_t (*ota_mark_valid)(void *ctx);

    /* A core dump left by a crash: size (ESP_ERR_NOT_FOUND when none), read, erase. */
    esp_err_t (*coredump_size)(void *ctx, uint32_t *size);
    esp_err_t (*coredump_read)(void *ctx, uint32_t offset, void *buf, size_t len);
    esp_err_t (*coredump_erase)(void *ctx);

    /* For the state report. */
    esp_reset_reason_t (*reset_reason)(void *ctx);
    esp_err_t (*rssi)(void *ctx, int *out);     /* ESP_ERR_NOT_SUPPORTED without a radio */

    /* Does not return. */
    void (*reboot)(void *ctx);
} mdm_port_ops_t;

/* The platform's port (port/<platform>/), and its context. */
extern const mdm_port_ops_t mdm_port_platform_ops;
void *mdm_port_platform_new(void);
void mdm_port_platform_free(void *ctx);

#ifdef __cplusplus
}
#endif
