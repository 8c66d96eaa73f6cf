/*
 * espmdm-device: the espmdm component as a linux process, for tests (SPEC §14).
 *
 *   espmdm-device --nvs FILE --state-dir DIR [--firmware-version V] [--run-for SECONDS]
 *                 [--crash-at STEP]
 *
 * It uses the component's public API only. What it adds is the board: an emulated flash per
 * device (DIR/flash.bin: the partition table and the provisioning partition, created from
 * --nvs at the first run; every later run is a reboot on what the previous one wrote), and
 * one JSON object per line on stdout for every event (logs go to stderr).
 *
 * Exit status: 0 after --run-for or SIGTERM (a clean stop), 70 at the --crash-at step (at once,
 * no cleanup), 75 when the component reboots the device (after an OTA: start it again),
 * 64 for a usage error, 1 when the device cannot start.
 */
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "esp_event.h"
#include "esp_log.h"
#include "esp_private/partition_linux.h"
#include "esp_timer.h"
#include "freertos/FreeRTOS.h"
#include "freertos/task.h"

#include "espmdm.h"

#define EXIT_CRASH 70
#define EXIT_USAGE 64

extern const uint8_t partition_table_start[] asm("_binary_partition_table_bin_start");
extern const uint8_t partition_table_end[] asm("_binary_partition_table_bin_end");

static volatile sig_atomic_t s_term;
static espmdm_step_t s_crash_at = ESPMDM_STEP_COUNT;

static void on_term(int sig)
{
    s_term = 1;
}

static int log_to_stderr(const char *fmt, va_list ap)
{
    return vfprintf(stderr, fmt, ap);
}

static void usage(const char *why)
{
    fprintf(stderr, "espmdm-device: %s\n"
                    "usage: espmdm-device --nvs FILE --state-dir DIR [--firmware-version V] [--run-for SECONDS]\n"
                    "                     [--crash-at STEP]\n"
                    "steps:",
            why);
    for (int i = 0; i < ESPMDM_STEP_COUNT; i++) {
        fprintf(stderr, " %s", espmdm_step_name((espmdm_step_t)i));
    }
    fprintf(stderr, "\n");
    exit(EXIT_USAGE);
}

/* ---------------------------------------------------------------- JSON lines */

static void put_str(const char *s)
{
    putchar('"');
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        switch (*p) {
        case '"': fputs("\\\"", stdout); break;
        case '\\': fputs("\\\\", stdout); break;
        case '\n': fputs("\\n", stdout); break;
        case '\r': fputs("\\r", stdout); break;
        case '\t': fputs("\\t", stdout); break;
        default:
            if (*p < 0x20) {
                printf("\\u%04x", *p);
            } else {
                putchar(*p);
            }
        }
    }
    putchar('"');
}

static void field_str(const char *k, const char *v)
{
    printf(",\"%s\":", k);
    put_str(v);
}

static void field_int(const char *k, long long v)
{
    printf(",\"%s\":%lld", k, v);
}

static const char *slot_name(espmdm_slot_t s)
{
    return s == ESPMDM_SLOT_NEXT ? "next" : "current";
}

static void on_event(void *arg, esp_event_base_t base, int32_t id, void *data)
{
    printf("{\"event\":");
    put_str(espmdm_event_name(id));
    field_int("t_ms", esp_timer_get_time() / 1000);
    switch ((espmdm_event_id_t)id) {
    case ESPMDM_EVENT_BOOT: {
        const espmdm_event_boot_t *e = data;
        field_str("slot", slot_name(e->slot));
        field_str("firmware_version", e->firmware_version);
        field_str("partition", e->partition);
        field_str("ota_state", e->ota_state == ESPMDM_OTA_STATE_PENDING_VERIFY ? "pending_verify" : "valid");
        field_str("client_id", e->client_id);
        break;
    }
    case ESPMDM_EVENT_TOKEN: {
        const espmdm_event_token_t *e = data;
        field_str("slot", slot_name(e->slot));
        field_int("expires_in", e->expires_in_s);
        break;
    }
    case ESPMDM_EVENT_CONNECTED:
        printf(",\"session_present\":%s", ((const espmdm_event_connected_t *)data)->session_present ? "true" : "false");
        break;
    case ESPMDM_EVENT_SUBSCRIBED:
        field_int("topics", ((const espmdm_event_subscribed_t *)data)->topics);
        break;
    case ESPMDM_EVENT_CONFIG: {
        const espmdm_event_config_t *e = data;
        printf(",\"config\":%s", e->len > 0 ? e->json : "null"); /* valid JSON: checked by the component */
        break;
    }
    case ESPMDM_EVENT_NUDGE: {
        const espmdm_event_nudge_t *e = data;
        static const char *const kinds[] = {"rotation", "config", "firmware"};
        field_str("topic", e->topic);
        field_str("kind", kinds[e->kind]);
        break;
    }
    case ESPMDM_EVENT_ROTATION_FETCHED:
        printf(",\"changed\":%s", ((const espmdm_event_rotation_t *)data)->changed ? "true" : "false");
        break;
    case ESPMDM_EVENT_ROTATION_ACKED:
        field_int("status", ((const espmdm_event_rotation_t *)data)->http_status);
        break;
    case ESPMDM_EVENT_PROMOTED:
        field_str("at", ((const espmdm_event_rotation_t *)data)->at_boot ? "boot" : "rotation");
        break;
    case ESPMDM_EVENT_OTA_STARTED:
    case ESPMDM_EVENT_OTA_INSTALLED:
    case ESPMDM_EVENT_OTA_CONFIRMED:
    case ESPMDM_EVENT_OTA_ROLLED_BACK:
    case ESPMDM_EVENT_OTA_FAILED: {
        const espmdm_event_ota_t *e = data;
        field_str("version", e->version);
        if (id == ESPMDM_EVENT_OTA_STARTED) {
            field_int("offset", e->offset);
        }
        if (e->size > 0) {
            field_int("size", e->size);
        }
        if (e->result[0] != '\0') {
            field_str("result", e->result);
        }
        break;
    }
    case ESPMDM_EVENT_COREDUMP_UPLOADED: {
        const espmdm_event_coredump_t *e = data;
        field_str("id", e->id);
        field_int("size", e->size);
        break;
    }
    case ESPMDM_EVENT_REBOOTING:
        field_str("reason", ((const espmdm_event_reboot_t *)data)->reason);
        break;
    case ESPMDM_EVENT_ERROR: {
        const espmdm_event_error_t *e = data;
        field_str("op", espmdm_op_name(e->op));
        field_str("message", e->message);
        field_str("err", esp_err_to_name(e->err));
        field_int("status", e->http_status);
        field_int("attempt", e->attempt);
        field_int("retry_in_ms", e->retry_in_ms);
        break;
    }
    case ESPMDM_EVENT_STATE_REPORTED:
        break;
    }
    fputs("}\n", stdout);
    fflush(stdout);
}

/* The linux port runs FreeRTOS tasks as threads and its idle task never blocks: without a
 * pause an idle device burns a core. The port defines an empty vApplicationIdleHook, so the
 * idle task's call is redirected here (-Wl,--wrap, main/CMakeLists.txt). Other tasks run in
 * threads of their own meanwhile. */
void __wrap_vApplicationIdleHook(void);
void __wrap_vApplicationIdleHook(void)
{
    /* The port turns usleep and nanosleep inside a task into vTaskDelay (a yield for the idle
     * task): the system call itself really sleeps this thread. */
    struct timespec ts = {.tv_sec = 0, .tv_nsec = 2 * 1000 * 1000};
    syscall(SYS_nanosleep, &ts, NULL);
}

/* The test hook: a crash at the named step is an exit at once, nothing flushed but what the
 * event handler already wrote (the component drains its events before calling the hook). */
static void on_step(espmdm_step_t step, void *arg)
{
    if (step == s_crash_at) {
        fprintf(stderr, "espmdm-device: crash at %s\n", espmdm_step_name(step));
        _exit(EXIT_CRASH);
    }
}

/* ---------------------------------------------------------------- the emulated flash */

typedef struct __attribute__((packed)) {
    uint16_t magic;
    uint8_t type, subtype;
    uint32_t offset, size;
    char label[16];
    uint32_t flags;
} part_entry_t;

static int make_flash(const char *flash, const char *nvs, const char *label)
{
    FILE *in = fopen(nvs, "rb");
    if (in == NULL) {
        fprintf(stderr, "espmdm-device: --nvs %s: %s\n", nvs, strerror(errno));
        return -1;
    }
    fseek(in, 0, SEEK_END);
    long nvs_size = ftell(in);
    fseek(in, 0, SEEK_SET);
    uint32_t end = 0x9000, off = 0, size = 0;
    for (const part_entry_t *e = (const part_entry_t *)partition_table_start;
         (const uint8_t *)(e + 1) <= partition_table_end && e->magic == 0x50AA; e++) {
        if (e->offset + e->size > end) {
            end = e->offset + e->size;
        }
        if (strncmp(e->label, label, sizeof(e->label)) == 0) {
            off = e->offset;
            size = e->size;
        }
    }
    if (size == 0 || nvs_size <= 0 || (uint32_t)nvs_size > size) {
        fprintf(stderr, "espmdm-device: --nvs %s: %ld bytes do not fit the %u-byte partition '%s'\n", nvs, nvs_size,
                (unsigned)size, label);
        fclose(in);
        return -1;
    }
    uint8_t *img = malloc(end);
    if (img == NULL) {
        fclose(in);
        return -1;
    }
    memset(img, 0xFF, end);
    memcpy(img + 0x8000, partition_table_start, (size_t)(partition_table_end - partition_table_start));
    size_t got = fread(img + off, 1, (size_t)nvs_size, in);
    fclose(in);
    char tmp[600];
    snprintf(tmp, sizeof(tmp), "%s.tmp", flash);
    FILE *out = fopen(tmp, "wb");
    bool ok = got == (size_t)nvs_size && out != NULL && fwrite(img, 1, end, out) == end;
    ok = out != NULL && fclose(out) == 0 && ok;
    free(img);
    if (!ok || rename(tmp, flash) != 0) {
        fprintf(stderr, "espmdm-device: writing %s failed\n", flash);
        return -1;
    }
    return 0;
}

/* ---------------------------------------------------------------- main */

/* app_main gets no argv on the linux target: read them back from /proc. */
static int read_args(char **argv, int max, char *buf, size_t cap)
{
    FILE *f = fopen("/proc/self/cmdline", "rb");
    if (f == NULL) {
        return 0;
    }
    size_t n = fread(buf, 1, cap - 1, f);
    fclose(f);
    buf[n] = '\0';
    int argc = 0;
    for (size_t i = 0; i < n && argc < max; i += strlen(buf + i) + 1) {
        argv[argc++] = buf + i;
    }
    return argc;
}

void app_main(void)
{
    esp_log_set_vprintf(log_to_stderr);
    const char *level = getenv("ESPMDM_DEVICE_LOG");
    esp_log_level_set("*", level && strcmp(level, "debug") == 0 ? ESP_LOG_DEBUG
                           : level && strcmp(level, "info") == 0 ? ESP_LOG_INFO : ESP_LOG_WARN);

    static char argbuf[4096];
    char *argv[32];
    int argc = read_args(argv, 32, argbuf, sizeof(argbuf));
    const char *nvs = NULL, *state_dir = NULL, *version = "1.0.0";
    double run_for = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (v == NULL) {
            usage("every option takes a value");
        }
        if (strcmp(a, "--nvs") == 0) {
            nvs = v;
        } else if (strcmp(a, "--state-dir") == 0) {
            state_dir = v;
        } else if (strcmp(a, "--firmware-version") == 0) {
            version = v;
        } else if (strcmp(a, "--run-for") == 0) {
            char *end = NULL;
            run_for = strtod(v, &end);
            if (end == v || *end != '\0' || run_for <= 0) {
                usage("--run-for takes a positive number of seconds");
            }
        } else if (strcmp(a, "--crash-at") == 0) {
            if (espmdm_step_from_name(v, &s_crash_at) != ESP_OK) {
                usage("unknown --crash-at step");
            }
        } else {
            usage("unknown option");
        }
        i++;
    }
    if (nvs == NULL || state_dir == NULL) {
        usage("--nvs and --state-dir are required");
    }

    struct sigaction sa = {0};
    sa.sa_handler = on_term;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    espmdm_config_t cfg = ESPMDM_DEFAULT_CONFIG();
    char flash[600];
    mkdir(state_dir, 0755);
    snprintf(flash, sizeof(flash), "%s/flash.bin", state_dir);
    if (access(flash, F_OK) != 0 && make_flash(flash, nvs, cfg.partition_label) != 0) {
        exit(1);
    }
    esp_partition_file_mmap_ctrl_t *ctrl = esp_partition_get_file_mmap_ctrl_input();
    strlcpy(ctrl->flash_file_name, flash, sizeof(ctrl->flash_file_name));

    if (esp_event_loop_create_default() != ESP_OK ||
        esp_event_handler_instance_register(ESPMDM_EVENT, ESP_EVENT_ANY_ID, on_event, NULL, NULL) != ESP_OK) {
        fprintf(stderr, "espmdm-device: event loop\n");
        exit(1);
    }
    cfg.state_dir = state_dir;
    cfg.factory_version = version;
    cfg.step_hook = on_step;
    espmdm_handle_t h = NULL;
    esp_err_t err = espmdm_init(&cfg, &h);
    if (err == ESP_OK) {
        err = espmdm_start(h);
    }
    if (err != ESP_OK) {
        fprintf(stderr, "espmdm-device: %s\n", esp_err_to_name(err));
        exit(1);
    }
    int64_t deadline = run_for > 0 ? esp_timer_get_time() + (int64_t)(run_for * 1e6) : INT64_MAX;
    while (!s_term && esp_timer_get_time() < deadline) {
        vTaskDelay(pdMS_TO_TICKS(50));
    }
    err = espmdm_stop(h);
    if (err != ESP_OK) {
        fprintf(stderr, "espmdm-device: stop: %s\n", esp_err_to_name(err));
    }
    fflush(stdout);
    exit(0);
}
