/*
 * The linux port (IDF's linux target, the host device and the tests). Files in the state
 * directory stand in for what an ESP32 keeps in flash:
 *   ota/ota_0.bin, ota/ota_1.bin   the two OTA app slots (the "factory" image is the process itself,
 *                                  its version given as factory_version)
 *   ota/otadata                    which slot boots and its state (new, pending_verify, valid,
 *                                  aborted), written atomically (rename)
 *   coredump/                      core dumps a crash left, one file each, oldest first
 *   reset_reason                   left by a reboot this port asked for (a software reset)
 * init() plays the bootloader with rollback: a new image boots as pending_verify; booted a
 * second time without being marked valid, it is aborted and the previous image boots.
 * reboot() ends the process with status ESPMDM_LINUX_REBOOT_EXIT: its runner starts it again.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "esp_log.h"
#include "esp_system.h"

#include "port.h"
#include "port_linux.h"

static const char *TAG = "espmdm.linux";

#define IMAGE_MAX (16u * 1024 * 1024)
#define APP_DESC_MAGIC 0xABCD5432u

typedef struct {
    char dir[200];
    char factory_version[32];
    char boot[16];      /* "factory", "ota_0", "ota_1" */
    char prev[16];
    char state[16];     /* new, pending_verify, valid, aborted */
    esp_reset_reason_t reset_reason;
    int fd;             /* the slot being written, -1 */
    char writing[16];
    uint32_t size, pos;
} linux_port_t;

void *mdm_port_platform_new(void)
{
    linux_port_t *p = calloc(1, sizeof(*p));
    if (p != NULL) {
        p->fd = -1;
    }
    return p;
}

void mdm_port_platform_free(void *ctx)
{
    linux_port_t *p = ctx;
    if (p != NULL && p->fd >= 0) {
        close(p->fd);
    }
    free(p);
}

static bool path(const linux_port_t *p, char *out, size_t cap, const char *a, const char *b)
{
    int n = b != NULL ? snprintf(out, cap, "%s/%s/%s", p->dir, a, b) : snprintf(out, cap, "%s/%s", p->dir, a);
    return n > 0 && (size_t)n < cap;
}

static void slot_path(const linux_port_t *p, const char *slot, char *out, size_t cap)
{
    char name[32];
    snprintf(name, sizeof(name), "%s.bin", slot);
    path(p, out, cap, "ota", name);
}

static esp_err_t write_otadata(const linux_port_t *p)
{
    char fin[300], tmp[310];
    path(p, fin, sizeof(fin), "ota", "otadata");
    snprintf(tmp, sizeof(tmp), "%s.tmp", fin);
    FILE *f = fopen(tmp, "w");
    if (f == NULL) {
        return ESP_FAIL;
    }
    fprintf(f, "boot=%s\nstate=%s\nprev=%s\n", p->boot, p->state, p->prev);
    bool ok = fflush(f) == 0 && fsync(fileno(f)) == 0;
    ok = fclose(f) == 0 && ok;
    return ok && rename(tmp, fin) == 0 ? ESP_OK : ESP_FAIL;
}

static void read_otadata(linux_port_t *p)
{
    strcpy(p->boot, "factory");
    strcpy(p->state, "valid");
    strcpy(p->prev, "factory");
    char fin[300];
    path(p, fin, sizeof(fin), "ota", "otadata");
    FILE *f = fopen(fin, "r");
    if (f == NULL) {
        return;
    }
    char line[64], *v;
    while (fgets(line, sizeof(line), f) != NULL) {
        line[strcspn(line, "\n")] = '\0';
        if ((v = strchr(line, '=')) == NULL || strlen(v + 1) >= 16) {
            continue;
        }
        *v++ = '\0';
        if (strcmp(line, "boot") == 0) {
            strcpy(p->boot, v);
        } else if (strcmp(line, "state") == 0) {
            strcpy(p->state, v);
        } else if (strcmp(line, "prev") == 0) {
            strcpy(p->prev, v);
        }
    }
    fclose(f);
}

esp_err_t mdm_linux_image_info(const char *file, char version[32], uint32_t *secure_version, char elf_sha[65])
{
    uint8_t b[32 + 256];
    FILE *f = fopen(file, "rb");
    if (f == NULL) {
        return ESP_ERR_NOT_FOUND;
    }
    size_t n = fread(b, 1, sizeof(b), f);
    fclose(f);
    /* image header (24 bytes), first segment header (8), then esp_app_desc_t */
    if (n < sizeof(b) || b[0] != 0xE9 || b[1] == 0) {
        return ESP_ERR_INVALID_VERSION;
    }
    const uint8_t *d = b + 32;
    uint32_t magic = (uint32_t)d[0] | (uint32_t)d[1] << 8 | (uint32_t)d[2] << 16 | (uint32_t)d[3] << 24;
    if (magic != APP_DESC_MAGIC) {
        return ESP_ERR_INVALID_VERSION;
    }
    *secure_version = (uint32_t)d[4] | (uint32_t)d[5] << 8 | (uint32_t)d[6] << 16 | (uint32_t)d[7] << 24;
    memcpy(version, d + 16, 31);
    version[31] = '\0';
    static const char hex[] = "0123456789abcdef";
    bool zero = true;
    for (int i = 0; i < 32; i++) {
        elf_sha[2 * i] = hex[d[144 + i] >> 4];
        elf_sha[2 * i + 1] = hex[d[144 + i] & 15];
        zero = zero && d[144 + i] == 0;
    }
    elf_sha[64] = '\0';
    if (zero) {
        elf_sha[0] = '\0';
    }
    return version[0] != '\0' ? ESP_OK : ESP_ERR_INVALID_VERSION;
}

static esp_err_t linux_init(void *ctx, const espmdm_config_t *cfg, const char *factory_version, const char *state_dir)
{
    linux_port_t *p = ctx;
    if (state_dir == NULL || state_dir[0] == '\0' || strlen(state_dir) >= sizeof(p->dir) ||
        factory_version == NULL || factory_version[0] == '\0' || strlen(factory_version) >= sizeof(p->factory_version)) {
        ESP_LOGE(TAG, "the linux port needs state_dir and factory_version");
        return ESP_ERR_INVALID_ARG;
    }
    strcpy(p->dir, state_dir);
    strcpy(p->factory_version, factory_version);
    char d[300];
    mkdir(p->dir, 0755);
    path(p, d, sizeof(d), "ota", NULL);
    mkdir(d, 0755);
    path(p, d, sizeof(d), "coredump", NULL);
    mkdir(d, 0755);
    /* A reboot this port asked for left a mark: a software reset; else a power-on. */
    path(p, d, sizeof(d), "reset_reason", NULL);
    p->reset_reason = unlink(d) == 0 ? ESP_RST_SW : ESP_RST_POWERON;
    /* The bootloader's part. */
    read_otadata(p);
    if (strcmp(p->boot, "factory") != 0) {
        if (strcmp(p->state, "new") == 0) {
            strcpy(p->state, "pending_verify");
        } else if (strcmp(p->state, "pending_verify") == 0 || strcmp(p->state, "aborted") == 0) {
            ESP_LOGW(TAG, "%s booted before without being confirmed: rolling back to %s", p->boot, p->prev);
            strcpy(p->boot, p->prev);
            strcpy(p->state, "valid");
            strcpy(p->prev, "factory");
        }
        return write_otadata(p);
    }
    return ESP_OK;
}

static esp_err_t linux_app_info(void *ctx, mdm_app_info_t *out)
{
    linux_port_t *p = ctx;
    memset(out, 0, sizeof(*out));
    strcpy(out->partition, p->boot);
    out->ota_state = strcmp(p->state, "pending_verify") == 0 ? ESPMDM_OTA_STATE_PENDING_VERIFY : ESPMDM_OTA_STATE_VALID;
    if (strcmp(p->boot, "factory") == 0) {
        strcpy(out->version, p->factory_version);
        return ESP_OK;
    }
    char file[300];
    slot_path(p, p->boot, file, sizeof(file));
    esp_err_t err = mdm_linux_image_info(file, out->version, &out->secure_version, out->elf_sha256);
    if (err != ESP_OK) {
        /* A slot that cannot be read cannot have booted: the factory image runs. */
        ESP_LOGE(TAG, "slot %s unreadable (%s): running the factory image", p->boot, esp_err_to_name(err));
        strcpy(p->boot, "factory");
        strcpy(p->state, "valid");
        strcpy(out->partition, "factory");
        strcpy(out->version, p->factory_version);
        out->ota_state = ESPMDM_OTA_STATE_VALID;
        return write_otadata(p);
    }
    return ESP_OK;
}

static esp_err_t linux_ota_begin(void *ctx, uint32_t size, uint32_t offset)
{
    linux_port_t *p = ctx;
    if (size > IMAGE_MAX || offset > size) {
        return ESP_ERR_INVALID_SIZE;
    }
    if (p->fd >= 0) {
        close(p->fd);
    }
    strcpy(p->writing, strcmp(p->boot, "ota_0") == 0 ? "ota_1" : "ota_0");
    char file[300];
    slot_path(p, p->writing, file, sizeof(file));
    p->fd = open(file, O_RDWR | O_CREAT | (offset == 0 ? O_TRUNC : 0), 0644);
    if (p->fd < 0) {
        return ESP_FAIL;
    }
    struct stat st;
    if (offset > 0 && (fstat(p->fd, &st) != 0 || st.st_size < (off_t)offset)) {
        close(p->fd);
        p->fd = -1;
        return ESP_ERR_INVALID_STATE; /* the slot lost what the checkpoint counts on */
    }
    p->size = size;
    p->pos = offset;
    return ESP_OK;
}

static esp_err_t linux_ota_write(void *ctx, const void *data, size_t len)
{
    linux_port_t *p = ctx;
    if (p->fd < 0 || p->pos + len > p->size) {
        return ESP_ERR_INVALID_STATE;
    }
    const uint8_t *b = data;
    while (len > 0) {
        ssize_t n = pwrite(p->fd, b, len, p->pos);
        if (n <= 0) {
            return ESP_FAIL;
        }
        b += n;
        len -= (size_t)n;
        p->pos += (uint32_t)n;
    }
    return ESP_OK;
}

static esp_err_t linux_ota_flush(void *ctx)
{
    linux_port_t *p = ctx;
    return p->fd >= 0 && fsync(p->fd) == 0 ? ESP_OK : ESP_FAIL;
}

static esp_err_t linux_ota_read(void *ctx, uint32_t offset, void *buf, size_t len)
{
    linux_port_t *p = ctx;
    if (p->fd < 0) {
        return ESP_ERR_INVALID_STATE;
    }
    ssize_t n = pread(p->fd, buf, len, offset);
    return n == (ssize_t)len ? ESP_OK : ESP_FAIL;
}

static esp_err_t linux_ota_end(void *ctx)
{
    linux_port_t *p = ctx;
    if (p->fd < 0 || p->pos != p->size) {
        return ESP_ERR_INVALID_STATE;
    }
    bool ok = fsync(p->fd) == 0 && ftruncate(p->fd, p->size) == 0;
    close(p->fd);
    p->fd = -1;
    if (!ok) {
        return ESP_FAIL;
    }
    char file[300], version[32], sha[65];
    uint32_t secure = 0;
    slot_path(p, p->writing, file, sizeof(file));
    esp_err_t err = mdm_linux_image_info(file, version, &secure, sha);
    if (err != ESP_OK) {
        ESP_LOGE(TAG, "the new image has no valid app descriptor");
        return err;
    }
    strcpy(p->prev, p->boot);
    strcpy(p->boot, p->writing);
    strcpy(p->state, "new");
    return write_otadata(p);
}

static void linux_ota_abort(void *ctx)
{
    linux_port_t *p = ctx;
    if (p->fd >= 0) {
        close(p->fd);
        p->fd = -1;
    }
}

static esp_err_t linux_ota_mark_valid(void *ctx)
{
    linux_port_t *p = ctx;
    if (strcmp(p->state, "pending_verify") != 0) {
        return ESP_OK;
    }
    strcpy(p->state, "valid");
    return write_otadata(p);
}

/* The oldest core dump's file name, or "" when there is none. */
static void oldest_dump(const linux_port_t *p, char *out, size_t cap)
{
    out[0] = '\0';
    char dir[300];
    path(p, dir, sizeof(dir), "coredump", NULL);
    DIR *d = opendir(dir);
    if (d == NULL) {
        return;
    }
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.' || strlen(e->d_name) >= cap) {
            continue;
        }
        if (out[0] == '\0' || strcmp(e->d_name, out) < 0) {
            strcpy(out, e->d_name);
        }
    }
    closedir(d);
}

static esp_err_t linux_coredump_size(void *ctx, uint32_t *size)
{
    linux_port_t *p = ctx;
    char name[128], file[450];
    oldest_dump(p, name, sizeof(name));
    if (name[0] == '\0') {
        return ESP_ERR_NOT_FOUND;
    }
    path(p, file, sizeof(file), "coredump", name);
    struct stat st;
    if (stat(file, &st) != 0 || st.st_size > IMAGE_MAX) {
        return ESP_FAIL;
    }
    *size = (uint32_t)st.st_size;
    return ESP_OK;
}

static esp_err_t linux_coredump_read(void *ctx, uint32_t offset, void *buf, size_t len)
{
    linux_port_t *p = ctx;
    char name[128], file[450];
    oldest_dump(p, name, sizeof(name));
    path(p, file, sizeof(file), "coredump", name);
    int fd = open(file, O_RDONLY);
    if (fd < 0) {
        return ESP_ERR_NOT_FOUND;
    }
    ssize_t n = pread(fd, buf, len, offset);
    close(fd);
    return n == (ssize_t)len ? ESP_OK : ESP_FAIL;
}

static esp_err_t linux_coredump_erase(void *ctx)
{
    linux_port_t *p = ctx;
    char name[128], file[450];
    oldest_dump(p, name, sizeof(name));
    if (name[0] == '\0') {
        return ESP_OK;
    }
    path(p, file, sizeof(file), "coredump", name);
    return unlink(file) == 0 ? ESP_OK : ESP_FAIL;
}

static esp_reset_reason_t linux_reset_reason(void *ctx)
{
    return ((linux_port_t *)ctx)->reset_reason;
}

static esp_err_t linux_rssi(void *ctx, int *out)
{
    return ESP_ERR_NOT_SUPPORTED;
}

static esp_err_t linux_net_up(void *ctx, const char *ssid, const char *password, uint32_t timeout_ms)
{
    return ESP_OK; /* the host's network is up */
}

static void linux_reboot(void *ctx)
{
    linux_port_t *p = ctx;
    char file[300];
    path(p, file, sizeof(file), "reset_reason", NULL);
    FILE *f = fopen(file, "w");
    if (f != NULL) {
        fclose(f);
    }
    fflush(stdout);
    fflush(stderr);
    _exit(ESPMDM_LINUX_REBOOT_EXIT);
}

const mdm_port_ops_t mdm_port_platform_ops = {
    .init = linux_init,
    .net_up = linux_net_up,
    .app_info = linux_app_info,
    .ota_begin = linux_ota_begin,
    .ota_write = linux_ota_write,
    .ota_flush = linux_ota_flush,
    .ota_read = linux_ota_read,
    .ota_end = linux_ota_end,
    .ota_abort = linux_ota_abort,
    .ota_mark_valid = linux_ota_mark_valid,
    .coredump_size = linux_coredump_size,
    .coredump_read = linux_coredump_read,
    .coredump_erase = linux_coredump_erase,
    .reset_reason = linux_reset_reason,
    .rssi = linux_rssi,
    .reboot = linux_reboot,
};
