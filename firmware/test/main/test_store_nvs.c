/* The store seam over the real nvs_flash, on the linux target's emulated flash: the slots and
 * the OTA progress survive a close and reopen, and a partition without the namespace "prov" is
 * reported without one being created. */
#include <string.h>

#include "check.h"
#include "esp_private/partition_linux.h"
#include "fakes.h"
#include "nvs.h"
#include "nvs_flash.h"

static fake_server_t N_sv;
static fake_port_t N_port;
static fake_store_t N_unused;
static fake_device_t N_d;

static esp_err_t read_prov(const char *key, char *out, size_t cap)
{
    nvs_handle_t h;
    esp_err_t err = nvs_open_from_partition("nvs", "prov", NVS_READONLY, &h);
    if (err != ESP_OK) {
        return err;
    }
    size_t len = cap;
    err = nvs_get_str(h, key, out, &len);
    nvs_close(h);
    return err;
}

TEST(nvs_store_keeps_the_slots_and_never_creates_prov)
{
    CHECK_INT(nvs_flash_erase_partition("nvs"), ESP_OK);
    /* The emulated flash is a temporary file (made at the first access, which also clears
     * the input controls): removed at the end. */
    esp_partition_get_file_mmap_ctrl_input()->remove_dump = true;

    fake_server_reset(&N_sv, FAKE_GRACE, "s0");
    fake_port_reset(&N_port, "1.0.0");
    CHECK_INT(fake_device_init(&N_d, &N_unused, &N_sv, &N_port), ESP_OK);
    mdm_t *m = &N_d.m;
    m->store = &mdm_store_nvs_ops;
    m->store_ctx = mdm_store_nvs_new("nvs");
    CHECK(m->store_ctx != NULL);

    /* erased: no namespace prov, and the load does not create one */
    mdm_err_t e = {0};
    CHECK_INT(mdm_prov_load(m, &e), MDM_RETRY);
    CHECK(strstr(e.message, "no namespace 'prov'") != NULL);
    char v[128];
    CHECK_INT(read_prov("client_id", v, sizeof(v)), ESP_ERR_NVS_NOT_FOUND);

    /* provisioned as espmdm does */
    nvs_handle_t h;
    CHECK_INT(nvs_open_from_partition("nvs", "prov", NVS_READWRITE, &h), ESP_OK);
    nvs_set_str(h, "device_key", "abcd1234");
    nvs_set_str(h, "client_id", FAKE_CLIENT_ID);
    nvs_set_str(h, "client_secret", "s0");
    nvs_set_str(h, "token_url", "http://kc/token");
    nvs_set_str(h, "base_url", "http://mdm");
    CHECK_INT(nvs_commit(h), ESP_OK);
    nvs_close(h);

    CHECK_INT(mdm_prov_load(m, &e), MDM_DONE);
    CHECK_STR(m->prov.secret, "s0");
    CHECK_STR(m->prov.model_code, "sensor_v2");
    CHECK_INT(mdm_prov_write_next(m, "s1"), ESP_OK);
    CHECK_INT(read_prov(MDM_KEY_SECRET_NEXT, v, sizeof(v)), ESP_OK);
    CHECK_STR(v, "s1");
    CHECK_INT(mdm_prov_promote(m), ESP_OK);
    CHECK_INT(mdm_prov_set_mqtt_password(m, "pw"), ESP_OK);
    mdm_ota_progress_t p = {.version = "2.0.0", .sha = "ab", .offset = 16384, .size = 40000};
    CHECK_INT(mdm_ota_progress_save(m, &p), ESP_OK);

    /* closed and opened again (a reboot) */
    mdm_store_nvs_free(m->store_ctx);
    m->store_ctx = mdm_store_nvs_new("nvs");
    memset(&m->prov, 0, sizeof(m->prov));
    CHECK_INT(mdm_prov_load(m, &e), MDM_DONE);
    CHECK_STR(m->prov.secret, "s1");
    CHECK_STR(m->prov.secret_next, "");
    CHECK_STR(m->prov.mqtt_password, "pw");
    CHECK_INT(read_prov(MDM_KEY_SECRET_NEXT, v, sizeof(v)), ESP_ERR_NVS_NOT_FOUND);
    mdm_ota_progress_t q;
    CHECK_INT(mdm_ota_progress_load(m, &q), ESP_OK);
    CHECK_STR(q.version, "2.0.0");
    CHECK_INT(q.offset, 16384);
    CHECK_INT(q.size, 40000);
    CHECK_INT(mdm_ota_progress_clear(m), ESP_OK);
    CHECK_INT(mdm_ota_progress_load(m, &q), ESP_OK);
    CHECK_STR(q.version, "");
    mdm_store_nvs_free(m->store_ctx);
    m->store_ctx = NULL;
    fake_device_free(&N_d);
    CHECK_INT(esp_partition_file_munmap(), ESP_OK);
}
