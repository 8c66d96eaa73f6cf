/* Firmware: check, download with Range resume (after a cut and after a crash), SHA-256
 * verification (the version answer's sha256, else the ETag), install, confirmation after the
 * check-in, rollback. */
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "fakes.h"

#define IMG_LEN 20000

typedef struct {
    fake_store_t st;
    fake_server_t sv;
    fake_port_t port;
    fake_device_t d;
    uint8_t img[IMG_LEN];
    uint8_t img2[IMG_LEN];
} ota_rig_t;

static ota_rig_t O;

/* An app image: magic, one segment, the app descriptor with version, filler. */
static void make_image(uint8_t *img, size_t len, const char *version, uint32_t seed)
{
    uint32_t x = seed * 2654435761u + 1;
    for (size_t i = 0; i < len; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        img[i] = (uint8_t)x;
    }
    memset(img, 0, 32 + 256);
    img[0] = 0xE9;
    img[1] = 1;
    const uint32_t magic = 0xABCD5432u;
    memcpy(img + 32, &magic, 4);
    strcpy((char *)img + 48, version);
}

static void serve(const uint8_t *img, const char *version, bool with_sha)
{
    O.sv.fw = img;
    O.sv.fw_len = IMG_LEN;
    strcpy(O.sv.fw_version, version);
    mdm_sha256_hex(img, IMG_LEN, O.sv.fw_sha);
    O.sv.version_has_sha = with_sha;
}

static void ota_new(void)
{
    fake_device_free(&O.d);
    fake_store_provision(&O.st, "s0");
    fake_server_reset(&O.sv, FAKE_GRACE, "s0");
    fake_port_reset(&O.port, "1.0.0");
    fake_device_init(&O.d, &O.st, &O.sv, &O.port);
    make_image(O.img, IMG_LEN, "2.0.0", 1);
    make_image(O.img2, IMG_LEN, "2.0.1", 2);
    mdm_err_t e;
    mdm_prov_load(&O.d.m, &e);
    mdm_ota_boot(&O.d.m);
    mdm_auth(&O.d.m, &e);
}

/* A restart: uncommitted writes lost, the port's bootloader runs, a new handle. */
static void ota_reboot(void)
{
    fake_store_crash(&O.st);
    fake_port_boot(&O.port);
    fake_device_free(&O.d);
    fake_device_init(&O.d, &O.st, &O.sv, &O.port);
    mdm_err_t e;
    mdm_prov_load(&O.d.m, &e);
    mdm_ota_boot(&O.d.m);
    mdm_auth(&O.d.m, &e);
}

static bool ota_run(espmdm_step_t crash_at, mdm_res_t *res, mdm_err_t *e)
{
    O.d.crash_at = crash_at;
    if (setjmp(O.d.crash) != 0) {
        return true;
    }
    *res = mdm_ota_run(&O.d.m, e);
    O.d.crash_at = ESPMDM_STEP_COUNT;
    return false;
}

static const char *state(const char *key)
{
    return fake_store_get(&O.st, "espmdm", key);
}

TEST(ota_installs_a_verified_image_and_reboots)
{
    ota_new();
    serve(O.img, "2.0.0", true);
    mdm_res_t res;
    mdm_err_t e = {0};
    CHECK(!ota_run(ESPMDM_STEP_COUNT, &res, &e));
    CHECK_INT(res, MDM_DONE);
    CHECK_INT(O.sv.downloads, 1);
    CHECK(memcmp(O.port.slot, O.img, IMG_LEN) == 0);
    CHECK_STR(O.port.installed, "2.0.0");
    CHECK_INT(O.port.reboots, 1);
    const espmdm_event_ota_t *st = fake_device_last(&O.d, ESPMDM_EVENT_OTA_STARTED);
    CHECK(st != NULL && st->offset == 0 && st->size == IMG_LEN);
    CHECK(fake_device_last(&O.d, ESPMDM_EVENT_OTA_INSTALLED) != NULL);
    CHECK(fake_device_last(&O.d, ESPMDM_EVENT_REBOOTING) != NULL);
    CHECK_STR(state("ota_res"), "pending");
    CHECK_STR(state("ota_ver"), "");
    /* the next boot runs it pending verification; the check-in confirms it */
    ota_reboot();
    CHECK_STR(O.d.m.app.version, "2.0.0");
    CHECK_INT(O.d.m.app.ota_state, ESPMDM_OTA_STATE_PENDING_VERIFY);
    CHECK_INT(O.port.marked_valid, 0);
    CHECK_INT(mdm_config_run(&O.d.m, &e), MDM_DONE);
    CHECK_INT(O.port.marked_valid, 1);
    CHECK(fake_device_last(&O.d, ESPMDM_EVENT_OTA_CONFIRMED) != NULL);
    CHECK_STR(state("ota_res"), "installed");
    CHECK_STR(O.d.m.ota_result, "installed");
    /* the same version is not downloaded again */
    CHECK(!ota_run(ESPMDM_STEP_COUNT, &res, &e));
    CHECK_INT(O.sv.downloads, 1);
}

TEST(ota_resumes_a_cut_download_with_range)
{
    ota_new();
    serve(O.img, "2.0.0", false); /* today's espmdm: the SHA-256 comes from the ETag */
    O.sv.cut_after = 9000;
    mdm_res_t res;
    mdm_err_t e = {0};
    CHECK(!ota_run(ESPMDM_STEP_COUNT, &res, &e));
    CHECK_INT(res, MDM_RETRY);
    CHECK(strstr(e.message, "cut off") != NULL);
    CHECK_STR(state("ota_ver"), "2.0.0");
    CHECK(!ota_run(ESPMDM_STEP_COUNT, &res, &e));
    CHECK_INT(res, MDM_DONE);
    /* the last checkpoint: every 4 KiB or more (the fake sends 1000-byte pieces) */
    CHECK_STR(O.sv.last_range, "bytes=5000-");
    char want[80];
    snprintf(want, sizeof(want), "\"%s\"", O.sv.fw_sha);
    CHECK_STR(O.sv.last_if_range, want);
    const espmdm_event_ota_t *st = fake_device_last(&O.d, ESPMDM_EVENT_OTA_STARTED);
    CHECK(st != NULL && st->offset == 5000);
    CHECK(memcmp(O.port.slot, O.img, IMG_LEN) == 0);
    CHECK_STR(O.port.installed, "2.0.0");
}

TEST(ota_resumes_after_a_crash_mid_download)
{
    ota_new();
    serve(O.img, "2.0.0", true);
    mdm_res_t res;
    mdm_err_t e = {0};
    CHECK(ota_run(ESPMDM_STEP_OTA_MID_DOWNLOAD, &res, &e));
    uint32_t off = 0;
    CHECK_INT(fake_store_ops.get_u32(&O.st, "espmdm", "ota_off", &off), ESP_OK);
    CHECK(off * 2 >= IMG_LEN && off < IMG_LEN);
    ota_reboot();
    CHECK_STR(O.d.m.app.version, "1.0.0");
    CHECK(!ota_run(ESPMDM_STEP_COUNT, &res, &e));
    CHECK_INT(res, MDM_DONE);
    char want[40];
    snprintf(want, sizeof(want), "bytes=%u-", (unsigned)off);
    CHECK_STR(O.sv.last_range, want);
    CHECK(memcmp(O.port.slot, O.img, IMG_LEN) == 0);
    CHECK_STR(O.port.installed, "2.0.0");
}

TEST(ota_starts_afresh_when_the_image_changed_under_a_resume)
{
    ota_new();
    serve(O.img, "2.0.0", false);
    O.sv.cut_after = 9000;
    mdm_res_t res;
    mdm_err_t e = {0};
    CHECK(!ota_run(ESPMDM_STEP_COUNT, &res, &e));
    CHECK_INT(res, MDM_RETRY);
    /* a new upload with the same version string: If-Range no longer holds, the answer is 200 */
    serve(O.img2, "2.0.0", false);
    CHECK(!ota_run(ESPMDM_STEP_COUNT, &res, &e));
    CHECK_INT(res, MDM_DONE);
    const espmdm_event_ota_t *st = fake_device_last(&O.d, ESPMDM_EVENT_OTA_STARTED);
    CHECK(st != NULL && st->offset == 0);
    CHECK(memcmp(O.port.slot, O.img2, IMG_LEN) == 0);
}

TEST(ota_refuses_an_image_whose_sha256_differs)
{
    ota_new();
    serve(O.img, "2.0.0", true);
    O.sv.fw_sha[0] = O.sv.fw_sha[0] == 'a' ? 'b' : 'a'; /* the version answer names another image */
    O.sv.etag_override[0] = '\0';
    mdm_res_t res;
    mdm_err_t e = {0};
    CHECK(!ota_run(ESPMDM_STEP_COUNT, &res, &e));
    CHECK_INT(res, MDM_DONE);
    const espmdm_event_ota_t *f = fake_device_last(&O.d, ESPMDM_EVENT_OTA_FAILED);
    CHECK(f != NULL);
    CHECK_STR(f->result, "verify_failed");
    CHECK_INT(O.port.reboots, 0);
    CHECK_STR(O.port.installed, "");
    CHECK_STR(state("ota_res"), "verify_failed");
    CHECK_STR(state("ota_bad_ver"), "2.0.0");
    /* not fetched again and again */
    CHECK(!ota_run(ESPMDM_STEP_COUNT, &res, &e));
    CHECK_INT(O.sv.downloads, 1);
    /* a new image of another version is */
    serve(O.img2, "2.0.1", true);
    CHECK(!ota_run(ESPMDM_STEP_COUNT, &res, &e));
    CHECK_INT(O.sv.downloads, 2);
    CHECK_STR(O.port.installed, "2.0.1");
}

TEST(ota_without_any_sha256_installs_nothing)
{
    ota_new();
    serve(O.img, "2.0.0", false);
    strcpy(O.sv.etag_override, "W/\"weak\"");
    mdm_res_t res;
    mdm_err_t e = {0};
    CHECK(!ota_run(ESPMDM_STEP_COUNT, &res, &e));
    CHECK_INT(res, MDM_DONE);
    CHECK_STR(O.port.installed, "");
    const espmdm_event_ota_t *f = fake_device_last(&O.d, ESPMDM_EVENT_OTA_FAILED);
    CHECK(f != NULL);
    CHECK_STR(f->result, "verify_failed");
}

TEST(ota_rolled_back_image_is_reported_and_not_retried)
{
    ota_new();
    serve(O.img, "2.0.0", true);
    mdm_res_t res;
    mdm_err_t e = {0};
    CHECK(!ota_run(ESPMDM_STEP_COUNT, &res, &e));
    ota_reboot(); /* runs 2.0.0 pending verification */
    O.d.crash_at = ESPMDM_STEP_OTA_BEFORE_CONFIRM;
    bool crashed = false;
    if (setjmp(O.d.crash) == 0) {
        mdm_config_run(&O.d.m, &e);
    } else {
        crashed = true;
    }
    CHECK(crashed);
    CHECK_INT(O.port.marked_valid, 0);
    ota_reboot(); /* booted again unconfirmed: the bootloader goes back to 1.0.0 */
    CHECK_STR(O.d.m.app.version, "1.0.0");
    const espmdm_event_ota_t *rb = fake_device_last(&O.d, ESPMDM_EVENT_OTA_ROLLED_BACK);
    CHECK(rb != NULL);
    CHECK_STR(rb->version, "2.0.0");
    CHECK_STR(O.d.m.ota_result, "rolled_back");
    CHECK_STR(O.d.m.ota_target, "2.0.0");
    int downloads = O.sv.downloads;
    CHECK(!ota_run(ESPMDM_STEP_COUNT, &res, &e));
    CHECK_INT(O.sv.downloads, downloads);
}

TEST(ota_image_too_large_for_the_slot_fails_for_good)
{
    ota_new();
    static uint8_t big[600 * 1024];
    make_image(big, sizeof(big), "3.0.0", 3);
    O.sv.fw = big;
    O.sv.fw_len = sizeof(big);
    strcpy(O.sv.fw_version, "3.0.0");
    mdm_sha256_hex(big, sizeof(big), O.sv.fw_sha);
    mdm_res_t res;
    mdm_err_t e = {0};
    CHECK(!ota_run(ESPMDM_STEP_COUNT, &res, &e));
    CHECK_INT(res, MDM_DONE);
    const espmdm_event_ota_t *f = fake_device_last(&O.d, ESPMDM_EVENT_OTA_FAILED);
    CHECK(f != NULL);
    CHECK_STR(f->result, "download_failed");
}

TEST(ota_nothing_to_do_without_firmware_or_on_the_same_version)
{
    ota_new();
    mdm_res_t res;
    mdm_err_t e = {0};
    CHECK(!ota_run(ESPMDM_STEP_COUNT, &res, &e));
    CHECK_INT(res, MDM_DONE);
    serve(O.img, "1.0.0", true);
    CHECK(!ota_run(ESPMDM_STEP_COUNT, &res, &e));
    CHECK_INT(res, MDM_DONE);
    CHECK_INT(O.sv.downloads, 0);
}

/* A firmware campaign (SPEC §16) nudges one device on iotsupport/<client_id>/firmware: the
 * same check as the model's topic, answered with the device's effective firmware. */
TEST(ota_a_campaign_nudge_on_the_device_topic_installs_its_target)
{
    ota_new();
    serve(O.img, "1.0.0", true); /* the model's released firmware: what it runs */
    mdm_res_t res;
    mdm_err_t e = {0};
    CHECK(!ota_run(ESPMDM_STEP_COUNT, &res, &e));
    CHECK_INT(O.sv.downloads, 0);
    serve(O.img, "2.0.0", true); /* assigned to this device by the campaign */
    const char *t = "iotsupport/" FAKE_CLIENT_ID "/firmware";
    espmdm_nudge_t k = ESPMDM_NUDGE_CONFIG;
    CHECK(mdm_topic_kind(&O.d.m, t, strlen(t), &k));
    CHECK_INT(k, ESPMDM_NUDGE_FIRMWARE);
    mdm_on_nudge(&O.d.m, k);
    CHECK(O.d.m.jobs[MDM_JOB_FIRMWARE].pending);
    fake_device_run(&O.d, 0);
    CHECK_INT(O.sv.downloads, 1);
    CHECK_STR(O.port.installed, "2.0.0");
    CHECK_INT(O.port.reboots, 1);
    /* after the reboot and the check-in: the confirmed boot the campaign counts as success */
    ota_reboot();
    CHECK_INT(mdm_config_run(&O.d.m, &e), MDM_DONE);
    char body[512];
    CHECK(mdm_report_body(&O.d.m, body, sizeof(body)));
    CHECK(strstr(body, "\"firmware_version\":\"2.0.0\"") != NULL);
    CHECK(strstr(body, "\"ota_state\":\"valid\"") != NULL);
    CHECK(strstr(body, "\"ota\":{\"target\":\"2.0.0\",\"result\":\"installed\"}") != NULL);
}

/* A campaign's target that the bootloader rolls back: reported as rolled_back on the previous
 * version, valid; offered again (no rollback_on_abort) it is not fetched; offered the released
 * version again (the assignment withdrawn) there is nothing to do. */
TEST(ota_a_campaign_target_rolled_back_is_reported_and_the_released_one_kept)
{
    ota_new();
    serve(O.img, "2.0.0", true);
    mdm_res_t res;
    mdm_err_t e = {0};
    CHECK(!ota_run(ESPMDM_STEP_COUNT, &res, &e));
    ota_reboot(); /* 2.0.0 pending verification; it never checks in */
    ota_reboot(); /* the bootloader goes back to 1.0.0 */
    CHECK_STR(O.d.m.app.version, "1.0.0");
    char body[512];
    CHECK(mdm_report_body(&O.d.m, body, sizeof(body)));
    CHECK(strstr(body, "\"firmware_version\":\"1.0.0\"") != NULL);
    CHECK(strstr(body, "\"ota_state\":\"valid\"") != NULL);
    CHECK(strstr(body, "\"ota\":{\"target\":\"2.0.0\",\"result\":\"rolled_back\"}") != NULL);
    int downloads = O.sv.downloads;
    mdm_on_nudge(&O.d.m, ESPMDM_NUDGE_FIRMWARE);
    fake_device_run(&O.d, 0);
    CHECK_INT(O.sv.downloads, downloads);
    serve(O.img2, "1.0.0", true); /* the released firmware again */
    mdm_on_nudge(&O.d.m, ESPMDM_NUDGE_FIRMWARE);
    fake_device_run(&O.d, 0);
    CHECK_INT(O.sv.downloads, downloads);
    CHECK_INT(fake_device_count(&O.d, ESPMDM_EVENT_ERROR), 0);
}
