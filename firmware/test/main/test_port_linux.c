/* The linux port on a temporary directory: the OTA slots and the bootloader's rollback, the
 * resumed write, the core-dump directory. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "fakes.h"
#include "port_linux.h"

static void image(uint8_t *img, size_t len, const char *version)
{
    memset(img, 0x11, len);
    memset(img, 0, 288);
    img[0] = 0xE9;
    img[1] = 1;
    const uint32_t magic = 0xABCD5432u;
    memcpy(img + 32, &magic, 4);
    strcpy((char *)img + 48, version);
    img[32 + 144] = 0xAB; /* an ELF SHA-256 */
}

static void boot(const char *dir, mdm_app_info_t *info)
{
    void *p = mdm_port_platform_new();
    espmdm_config_t cfg = ESPMDM_DEFAULT_CONFIG();
    mdm_port_platform_ops.init(p, &cfg, "1.0.0", dir);
    mdm_port_platform_ops.app_info(p, info);
    mdm_port_platform_free(p);
}

TEST(linux_port_installs_confirms_and_rolls_back)
{
    char dir[] = "/tmp/espmdm-port-XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    const mdm_port_ops_t *ops = &mdm_port_platform_ops;
    static uint8_t img[8192];
    mdm_app_info_t info;
    boot(dir, &info);
    CHECK_STR(info.version, "1.0.0");
    CHECK_STR(info.partition, "factory");
    CHECK_INT(info.ota_state, ESPMDM_OTA_STATE_VALID);

    /* install 2.0.0 in two parts, the second resumed from a new handle */
    image(img, sizeof(img), "2.0.0");
    void *p = mdm_port_platform_new();
    espmdm_config_t cfg = ESPMDM_DEFAULT_CONFIG();
    CHECK_INT(ops->init(p, &cfg, "1.0.0", dir), ESP_OK);
    CHECK_INT(ops->ota_begin(p, sizeof(img), 0), ESP_OK);
    CHECK_INT(ops->ota_write(p, img, 5000), ESP_OK);
    CHECK_INT(ops->ota_flush(p), ESP_OK);
    mdm_port_platform_free(p);
    p = mdm_port_platform_new();
    CHECK_INT(ops->init(p, &cfg, "1.0.0", dir), ESP_OK);
    CHECK_INT(ops->ota_begin(p, sizeof(img), 5000), ESP_OK);
    uint8_t back[100];
    CHECK_INT(ops->ota_read(p, 4900, back, 100), ESP_OK);
    CHECK(memcmp(back, img + 4900, 100) == 0);
    CHECK_INT(ops->ota_write(p, img + 5000, sizeof(img) - 5000), ESP_OK);
    CHECK_INT(ops->ota_end(p), ESP_OK);
    mdm_port_platform_free(p);

    boot(dir, &info); /* first boot of the new image */
    CHECK_STR(info.version, "2.0.0");
    CHECK_STR(info.partition, "ota_0");
    CHECK_INT(info.ota_state, ESPMDM_OTA_STATE_PENDING_VERIFY);
    CHECK(info.elf_sha256[0] == 'a' && info.elf_sha256[1] == 'b');
    boot(dir, &info); /* again, never confirmed: rolled back */
    CHECK_STR(info.version, "1.0.0");
    CHECK_STR(info.partition, "factory");

    /* install again, confirm: it stays */
    p = mdm_port_platform_new();
    CHECK_INT(ops->init(p, &cfg, "1.0.0", dir), ESP_OK);
    CHECK_INT(ops->ota_begin(p, sizeof(img), 0), ESP_OK);
    CHECK_INT(ops->ota_write(p, img, sizeof(img)), ESP_OK);
    CHECK_INT(ops->ota_end(p), ESP_OK);
    mdm_port_platform_free(p);
    p = mdm_port_platform_new();
    CHECK_INT(ops->init(p, &cfg, "1.0.0", dir), ESP_OK);
    CHECK_INT(ops->app_info(p, &info), ESP_OK);
    CHECK_INT(info.ota_state, ESPMDM_OTA_STATE_PENDING_VERIFY);
    CHECK_INT(ops->ota_mark_valid(p), ESP_OK);
    mdm_port_platform_free(p);
    boot(dir, &info);
    CHECK_STR(info.version, "2.0.0");
    CHECK_INT(info.ota_state, ESPMDM_OTA_STATE_VALID);
    boot(dir, &info);
    CHECK_STR(info.version, "2.0.0");

    /* an image without an app descriptor is refused at the end */
    p = mdm_port_platform_new();
    CHECK_INT(ops->init(p, &cfg, "1.0.0", dir), ESP_OK);
    memset(img, 0xFF, sizeof(img));
    CHECK_INT(ops->ota_begin(p, sizeof(img), 0), ESP_OK);
    CHECK_INT(ops->ota_write(p, img, sizeof(img)), ESP_OK);
    CHECK(ops->ota_end(p) != ESP_OK);
    CHECK(ops->ota_write(p, img, 1) != ESP_OK);
    mdm_port_platform_free(p);
    char cmd[300];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    CHECK(system(cmd) == 0);
}

TEST(linux_port_core_dumps_come_from_a_directory)
{
    char dir[] = "/tmp/espmdm-port-XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    const mdm_port_ops_t *ops = &mdm_port_platform_ops;
    void *p = mdm_port_platform_new();
    espmdm_config_t cfg = ESPMDM_DEFAULT_CONFIG();
    CHECK_INT(ops->init(p, &cfg, "1.0.0", dir), ESP_OK);
    uint32_t size = 0;
    CHECK_INT(ops->coredump_size(p, &size), ESP_ERR_NOT_FOUND);
    char file[300];
    snprintf(file, sizeof(file), "%s/coredump/0001.elf", dir);
    FILE *f = fopen(file, "wb");
    CHECK(f != NULL);
    fputs("ELF-core-dump", f);
    fclose(f);
    CHECK_INT(ops->coredump_size(p, &size), ESP_OK);
    CHECK_INT(size, 13);
    char buf[4] = {0};
    CHECK_INT(ops->coredump_read(p, 4, buf, 3), ESP_OK);
    CHECK(memcmp(buf, "cor", 3) == 0);
    CHECK_INT(ops->coredump_erase(p), ESP_OK);
    CHECK_INT(ops->coredump_size(p, &size), ESP_ERR_NOT_FOUND);
    CHECK_INT(ops->reset_reason(p), ESP_RST_POWERON);
    mdm_port_platform_free(p);
    char cmd[300];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    CHECK(system(cmd) == 0);
}
