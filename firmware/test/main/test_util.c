/* Helpers: backoff, names, topics, form encoding, the state report's body. */
#include <stdlib.h>
#include <string.h>

#include "cJSON.h"
#include "check.h"
#include "fakes.h"

TEST(backoff_doubles_within_bounds_and_jitters)
{
    uint32_t prev_max = 0;
    for (uint32_t attempt = 1; attempt <= 40; attempt++) {
        uint32_t lo = UINT32_MAX, hi = 0;
        for (uint32_t r = 0; r < 2000; r++) {
            uint32_t d = mdm_backoff_ms(attempt, 500, 4000, r * 2654435761u);
            lo = d < lo ? d : lo;
            hi = d > hi ? d : hi;
        }
        uint32_t full = attempt >= 4 ? 4000 : 500u << (attempt - 1);
        /* drawn in [full/2, full]: never 0, never above the cap */
        CHECK(lo >= full / 2);
        CHECK(hi <= full);
        CHECK(hi > lo); /* jittered */
        CHECK(hi >= prev_max);
        prev_max = hi;
    }
    CHECK(mdm_backoff_ms(1, 0, 0, 0) >= 1);
    CHECK(mdm_backoff_ms(UINT32_MAX, 1000, 300000, UINT32_MAX) <= 300000);
}

TEST(model_code_of_client_id)
{
    char code[64];
    CHECK(mdm_model_code("iotdevice-sensor_v2-abcd1234", code, sizeof(code)));
    CHECK_STR(code, "sensor_v2");
    CHECK(!mdm_model_code("iotdevice--abcd1234", code, sizeof(code)));
    CHECK(!mdm_model_code("iotdevice-sensor-ABCD1234", code, sizeof(code)));
    CHECK(!mdm_model_code("device-sensor-abcd1234", code, sizeof(code)));
    CHECK(!mdm_model_code("iotdevice-sen-sor-abcd1234", code, sizeof(code)));
    CHECK(!mdm_model_code("iotdevice-s-abcd123", code, sizeof(code)));
}

TEST(form_encoding_escapes_and_bounds)
{
    char out[64];
    CHECK(mdm_form_append(out, sizeof(out), "a", "x y&z=%", true));
    CHECK(mdm_form_append(out, sizeof(out), "b", "Az09-_.~", false));
    CHECK_STR(out, "a=x%20y%26z%3D%25&b=Az09-_.~");
    char small[8];
    CHECK(!mdm_form_append(small, sizeof(small), "secret", "abc", true));
}

TEST(step_and_event_names_round_trip)
{
    for (int i = 0; i < ESPMDM_STEP_COUNT; i++) {
        espmdm_step_t s;
        CHECK_INT(espmdm_step_from_name(espmdm_step_name((espmdm_step_t)i), &s), ESP_OK);
        CHECK_INT(s, i);
    }
    espmdm_step_t s;
    CHECK_INT(espmdm_step_from_name("after_nothing", &s), ESP_ERR_NOT_FOUND);
    const char *want[] = {"after_fetch", "after_write_next", "after_token_next", "after_ack", "ota_mid_download",
                          "ota_before_confirm"};
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
        CHECK_INT(espmdm_step_from_name(want[i], &s), ESP_OK);
    }
    CHECK_STR(espmdm_event_name(ESPMDM_EVENT_BOOT), "boot");
    CHECK_STR(espmdm_event_name(ESPMDM_EVENT_ROTATION_ACKED), "rotation_acked");
    CHECK_STR(espmdm_event_name(ESPMDM_EVENT_OTA_INSTALLED), "ota_installed");
    CHECK_STR(espmdm_event_name(ESPMDM_EVENT_STATE_REPORTED), "state_reported");
    CHECK_STR(espmdm_event_name(ESPMDM_EVENT_ERROR), "error");
    CHECK_STR(espmdm_event_name(ESPMDM_EVENT_CONNECTED), "connected");
    CHECK_STR(espmdm_event_name(ESPMDM_EVENT_SUBSCRIBED), "subscribed");
}

TEST(topics_and_nudge_kinds)
{
    static fake_store_t st;
    static fake_server_t sv;
    static fake_port_t port;
    static fake_device_t d;
    fake_store_provision(&st, "s0");
    fake_server_reset(&sv, FAKE_GRACE, "s0");
    fake_port_reset(&port, "1.0.0");
    CHECK_INT(fake_device_init(&d, &st, &sv, &port), ESP_OK);
    mdm_err_t e;
    CHECK_INT(mdm_prov_load(&d.m, &e), MDM_DONE);
    char topics[MDM_TOPIC_COUNT][MDM_TOPIC_MAX];
    CHECK(mdm_topics(&d.m, topics));
    CHECK_INT(MDM_TOPIC_COUNT, 4);
    CHECK_STR(topics[0], "iotsupport/" FAKE_CLIENT_ID "/rotation");
    CHECK_STR(topics[1], "iotsupport/" FAKE_CLIENT_ID "/config");
    CHECK_STR(topics[2], "iotsupport/" FAKE_CLIENT_ID "/firmware");
    CHECK_STR(topics[3], "iotsupport/sensor_v2/firmware");
    espmdm_nudge_t k;
    const char *t = "iotsupport/sensor_v2/firmware";
    CHECK(mdm_topic_kind(&d.m, t, strlen(t), &k));
    CHECK_INT(k, ESPMDM_NUDGE_FIRMWARE);
    /* a campaign's nudge to this device is the same question */
    k = ESPMDM_NUDGE_ROTATION;
    t = "iotsupport/" FAKE_CLIENT_ID "/firmware";
    CHECK(mdm_topic_kind(&d.m, t, strlen(t), &k));
    CHECK_INT(k, ESPMDM_NUDGE_FIRMWARE);
    t = "iotsupport/iotdevice-sensor_v2-zzzz9999/config"; /* another device's */
    CHECK(!mdm_topic_kind(&d.m, t, strlen(t), &k));
    t = "iotsupport/iotdevice-sensor_v2-zzzz9999/firmware"; /* another device's campaign */
    CHECK(!mdm_topic_kind(&d.m, t, strlen(t), &k));
    t = "iotsupport/other_model/firmware";
    CHECK(!mdm_topic_kind(&d.m, t, strlen(t), &k));
    t = "iotsupport/" FAKE_CLIENT_ID "/rotation";
    CHECK(mdm_topic_kind(&d.m, t, strlen(t), &k));
    CHECK_INT(k, ESPMDM_NUDGE_ROTATION);
    CHECK(!mdm_topic_kind(&d.m, t, strlen(t) - 1, &k));
    /* the longest client id and model code still fit every filter */
    CHECK(strlen("iotsupport//firmware") + MDM_CLIENT_ID_MAX - 1 < MDM_TOPIC_MAX);
    fake_device_free(&d);
}

TEST(state_report_body_has_the_spec_members_only)
{
    static fake_store_t st;
    static fake_server_t sv;
    static fake_port_t port;
    static fake_device_t d;
    fake_store_provision(&st, "s0");
    fake_server_reset(&sv, FAKE_GRACE, "s0");
    fake_port_reset(&port, "1.2.3");
    CHECK_INT(fake_device_init(&d, &st, &sv, &port), ESP_OK);
    strcpy(d.m.ota_target, "1.2.3");
    strcpy(d.m.ota_result, "installed");
    d.now = 42500;
    char body[1024];
    CHECK(mdm_report_body(&d.m, body, sizeof(body)));
    cJSON *doc = cJSON_Parse(body);
    CHECK(doc != NULL);
    static const char *allowed[] = {"firmware_version", "secure_version", "app_elf_sha256", "partition", "ota_state",
                                    "ota", "reset_reason", "uptime_s", "free_heap", "rssi", "idf_version"};
    for (cJSON *it = doc->child; it != NULL; it = it->next) {
        bool ok = false;
        for (size_t i = 0; i < sizeof(allowed) / sizeof(allowed[0]); i++) {
            ok = ok || strcmp(it->string, allowed[i]) == 0;
        }
        if (!ok) {
            check_fail(__FILE__, __LINE__, "member %s is not in SPEC 15", it->string);
        }
    }
    CHECK_STR(cJSON_GetObjectItem(doc, "firmware_version")->valuestring, "1.2.3");
    CHECK_STR(cJSON_GetObjectItem(doc, "ota_state")->valuestring, "valid");
    CHECK_STR(cJSON_GetObjectItem(cJSON_GetObjectItem(doc, "ota"), "result")->valuestring, "installed");
    CHECK_INT(cJSON_GetObjectItem(doc, "uptime_s")->valueint, 42);
    CHECK_INT(cJSON_GetObjectItem(doc, "rssi")->valueint, -61);
    CHECK(cJSON_IsString(cJSON_GetObjectItem(doc, "idf_version")));
    cJSON_Delete(doc);
    char tiny[16];
    CHECK(!mdm_report_body(&d.m, tiny, sizeof(tiny)));
    fake_device_free(&d);
}
