/* The store seam over nvs_flash: one partition, the namespaces "prov" and "espmdm". The
 * partition is never erased or re-initialised here: a corrupt one is reported, not wiped. */
#include <stdlib.h>
#include <string.h>

#include "nvs.h"
#include "nvs_flash.h"

#include "mdm.h"

typedef struct {
    char label[17];
    bool inited;
    nvs_handle_t prov;
    nvs_handle_t state;
    bool prov_open, state_open;
} nvs_store_t;

void *mdm_store_nvs_new(const char *label)
{
    nvs_store_t *s = calloc(1, sizeof(*s));
    if (s != NULL && !mdm_copy(s->label, sizeof(s->label), label)) {
        free(s);
        return NULL;
    }
    return s;
}

static void nvs_close_all(void *ctx)
{
    nvs_store_t *s = ctx;
    if (s->prov_open) {
        nvs_close(s->prov);
    }
    if (s->state_open) {
        nvs_close(s->state);
    }
    s->prov_open = s->state_open = false;
    if (s->inited) {
        nvs_flash_deinit_partition(s->label);
        s->inited = false;
    }
}

void mdm_store_nvs_free(void *ctx)
{
    if (ctx != NULL) {
        nvs_close_all(ctx);
        free(ctx);
    }
}

static esp_err_t nvs_store_open(void *ctx)
{
    nvs_store_t *s = ctx;
    esp_err_t err = nvs_flash_init_partition(s->label);
    if (err == ESP_ERR_NVS_NO_FREE_PAGES || err == ESP_ERR_NVS_NEW_VERSION_FOUND) {
        return err; /* the caller says so; erasing would lose the provisioning */
    }
    if (err != ESP_OK && err != ESP_ERR_INVALID_STATE) {
        return err;
    }
    s->inited = true;
    /* Read-only first: a read-write open would create a missing namespace. */
    nvs_handle_t probe;
    err = nvs_open_from_partition(s->label, MDM_NS_PROV, NVS_READONLY, &probe);
    if (err != ESP_OK) {
        return err;
    }
    nvs_close(probe);
    err = nvs_open_from_partition(s->label, MDM_NS_PROV, NVS_READWRITE, &s->prov);
    if (err != ESP_OK) {
        return err;
    }
    s->prov_open = true;
    err = nvs_open_from_partition(s->label, MDM_NS_STATE, NVS_READWRITE, &s->state);
    if (err != ESP_OK) {
        return err;
    }
    s->state_open = true;
    return ESP_OK;
}

static esp_err_t handle_of(nvs_store_t *s, const char *ns, nvs_handle_t *h)
{
    if (strcmp(ns, MDM_NS_PROV) == 0 && s->prov_open) {
        *h = s->prov;
        return ESP_OK;
    }
    if (strcmp(ns, MDM_NS_STATE) == 0 && s->state_open) {
        *h = s->state;
        return ESP_OK;
    }
    return ESP_ERR_INVALID_STATE;
}

static esp_err_t nvs_store_get_str(void *ctx, const char *ns, const char *key, char *out, size_t *len)
{
    nvs_handle_t h;
    esp_err_t err = handle_of(ctx, ns, &h);
    if (err != ESP_OK) {
        return err;
    }
    size_t need = 0;
    err = nvs_get_str(h, key, NULL, &need);
    if (err == ESP_ERR_NVS_NOT_FOUND) {
        return ESP_ERR_NOT_FOUND;
    }
    if (err != ESP_OK) {
        return err;
    }
    if (need > *len) {
        return ESP_ERR_INVALID_SIZE;
    }
    return nvs_get_str(h, key, out, len);
}

static esp_err_t nvs_store_set_str(void *ctx, const char *ns, const char *key, const char *value)
{
    nvs_handle_t h;
    esp_err_t err = handle_of(ctx, ns, &h);
    return err == ESP_OK ? nvs_set_str(h, key, value) : err;
}

static esp_err_t nvs_store_get_u32(void *ctx, const char *ns, const char *key, uint32_t *out)
{
    nvs_handle_t h;
    esp_err_t err = handle_of(ctx, ns, &h);
    if (err != ESP_OK) {
        return err;
    }
    err = nvs_get_u32(h, key, out);
    return err == ESP_ERR_NVS_NOT_FOUND ? ESP_ERR_NOT_FOUND : err;
}

static esp_err_t nvs_store_set_u32(void *ctx, const char *ns, const char *key, uint32_t value)
{
    nvs_handle_t h;
    esp_err_t err = handle_of(ctx, ns, &h);
    return err == ESP_OK ? nvs_set_u32(h, key, value) : err;
}

static esp_err_t nvs_store_erase(void *ctx, const char *ns, const char *key)
{
    nvs_handle_t h;
    esp_err_t err = handle_of(ctx, ns, &h);
    if (err != ESP_OK) {
        return err;
    }
    err = nvs_erase_key(h, key);
    return err == ESP_ERR_NVS_NOT_FOUND ? ESP_OK : err;
}

static esp_err_t nvs_store_commit(void *ctx, const char *ns)
{
    nvs_handle_t h;
    esp_err_t err = handle_of(ctx, ns, &h);
    return err == ESP_OK ? nvs_commit(h) : err;
}

const mdm_store_ops_t mdm_store_nvs_ops = {
    .open = nvs_store_open,
    .close = nvs_close_all,
    .get_str = nvs_store_get_str,
    .set_str = nvs_store_set_str,
    .get_u32 = nvs_store_get_u32,
    .set_u32 = nvs_store_set_u32,
    .erase = nvs_store_erase,
    .commit = nvs_store_commit,
};
