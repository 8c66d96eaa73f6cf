/* The scheduler: what a device does at start, nudges, failures with bounded backoff, the
 * state report and the core dump upload. */
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "fakes.h"
#include "nvs.h"

static fake_store_t J_st;
static fake_server_t J_sv;
static fake_port_t J_port;
static fake_device_t J_d;

static void jobs_new(void)
{
    fake_device_free(&J_d);
    fake_store_provision(&J_st, "s0");
    fake_server_reset(&J_sv, FAKE_GRACE, "s0");
    fake_port_reset(&J_port, "1.0.0");
    fake_device_init(&J_d, &J_st, &J_sv, &J_port);
    J_d.m.network_up = false;
    mdm_job_now(&J_d.m, MDM_JOB_PROV);
}

TEST(start_boots_fetches_config_and_reports)
{
    jobs_new();
    fake_device_run(&J_d, 0);
    CHECK_INT(fake_device_count(&J_d, ESPMDM_EVENT_BOOT), 1);
    CHECK_INT(fake_device_count(&J_d, ESPMDM_EVENT_TOKEN), 1);
    CHECK_INT(fake_device_count(&J_d, ESPMDM_EVENT_CONFIG), 1);
    const espmdm_event_config_t *c = fake_device_last(&J_d, ESPMDM_EVENT_CONFIG);
    CHECK_STR(c->json, "{\"interval\":60}");
    CHECK_INT(fake_device_count(&J_d, ESPMDM_EVENT_STATE_REPORTED), 1);
    CHECK_INT(fake_device_count(&J_d, ESPMDM_EVENT_ERROR), 0);
    /* periodically after that */
    fake_device_run(&J_d, 3600 * 1000);
    CHECK_INT(fake_device_count(&J_d, ESPMDM_EVENT_STATE_REPORTED), 2);
}

TEST(a_config_nudge_fetches_the_config_again)
{
    jobs_new();
    fake_device_run(&J_d, 0);
    strcpy(J_sv.config, "{\"interval\":5}");
    mdm_on_nudge(&J_d.m, ESPMDM_NUDGE_CONFIG);
    fake_device_run(&J_d, 0);
    CHECK_INT(fake_device_count(&J_d, ESPMDM_EVENT_CONFIG), 2);
    CHECK_STR(((const espmdm_event_config_t *)fake_device_last(&J_d, ESPMDM_EVENT_CONFIG))->json, "{\"interval\":5}");
    fake_server_trigger(&J_sv);
    mdm_on_nudge(&J_d.m, ESPMDM_NUDGE_ROTATION);
    fake_device_run(&J_d, 0);
    CHECK(!J_sv.pending);
    CHECK_INT(fake_device_count(&J_d, ESPMDM_EVENT_PROMOTED), 1);
}

TEST(an_unreachable_espmdm_is_retried_with_bounded_backoff)
{
    jobs_new();
    J_sv.espmdm_down = true;
    fake_device_run(&J_d, 120 * 1000);
    int errors = 0;
    int64_t last_retry = 0;
    uint32_t last_attempt = 0;
    for (int i = 0; i < J_d.n_events; i++) {
        if (J_d.events[i].id != ESPMDM_EVENT_ERROR) {
            continue;
        }
        const espmdm_event_error_t *e = (const void *)J_d.events[i].data;
        if (e->op != ESPMDM_OP_CONFIG) {
            continue;
        }
        errors++;
        CHECK(strstr(e->message, "unreachable") != NULL);
        CHECK(e->retry_in_ms >= 500 && e->retry_in_ms <= 60000);
        CHECK(e->attempt == last_attempt + 1);
        last_attempt = e->attempt;
        last_retry = e->retry_in_ms;
    }
    /* 1+2+4+8+16+32+60+... s, halved at worst by the jitter: a handful in two minutes, never a spin */
    CHECK(errors >= 4 && errors <= 12);
    CHECK(last_retry >= 30000);
    CHECK_INT(fake_device_count(&J_d, ESPMDM_EVENT_CONFIG), 0);
    /* back: the next retry gets through and the backoff starts over */
    J_sv.espmdm_down = false;
    fake_device_run(&J_d, 61000);
    CHECK_INT(fake_device_count(&J_d, ESPMDM_EVENT_CONFIG), 1);
    CHECK_INT(J_d.m.jobs[MDM_JOB_CONFIG].attempt, 0);
}

TEST(a_corrupt_partition_is_an_error_and_a_retry)
{
    jobs_new();
    J_st.open_err = ESP_ERR_NVS_NOT_FOUND;
    fake_device_run(&J_d, 30 * 1000);
    int errors = fake_device_count(&J_d, ESPMDM_EVENT_ERROR);
    CHECK(errors >= 3 && errors <= 8);
    const espmdm_event_error_t *e = fake_device_last(&J_d, ESPMDM_EVENT_ERROR);
    CHECK_INT(e->op, ESPMDM_OP_PROVISIONING);
    CHECK_INT(fake_device_count(&J_d, ESPMDM_EVENT_BOOT), 0);
    J_st.open_err = ESP_OK; /* reflashed */
    fake_device_run(&J_d, 60 * 1000);
    CHECK_INT(fake_device_count(&J_d, ESPMDM_EVENT_BOOT), 1);
}

TEST(a_state_report_refused_does_not_hold_up_the_rest)
{
    jobs_new();
    J_sv.state_status = 404; /* an espmdm without /iot/state */
    fake_device_run(&J_d, 10 * 1000);
    CHECK_INT(fake_device_count(&J_d, ESPMDM_EVENT_CONFIG), 1);
    CHECK_INT(fake_device_count(&J_d, ESPMDM_EVENT_STATE_REPORTED), 0);
    const espmdm_event_error_t *e = fake_device_last(&J_d, ESPMDM_EVENT_ERROR);
    CHECK(e != NULL);
    CHECK_INT(e->op, ESPMDM_OP_STATE);
    CHECK_INT(e->http_status, 404);
    CHECK(J_sv.reports >= 2 && J_sv.reports <= 5);
    J_sv.state_status = 204;
    fake_device_run(&J_d, 60 * 1000);
    CHECK_INT(fake_device_count(&J_d, ESPMDM_EVENT_STATE_REPORTED), 1);
}

TEST(a_core_dump_is_uploaded_then_erased)
{
    jobs_new();
    J_port.dump_len = 1500;
    memset(J_port.dump, 0x5A, J_port.dump_len);
    J_sv.coredump_status = 404; /* not there yet: kept, retried */
    fake_device_run(&J_d, 0);
    CHECK_INT(J_sv.dumps, 1);
    CHECK_INT(J_port.dump_len, 1500);
    J_sv.coredump_status = 201;
    fake_device_run(&J_d, 5000);
    CHECK_INT(J_sv.dumps, 2);
    CHECK_INT(J_sv.dump_received, 1500);
    CHECK_INT(J_port.dump_len, 0);
    const espmdm_event_coredump_t *c = fake_device_last(&J_d, ESPMDM_EVENT_COREDUMP_UPLOADED);
    CHECK(c != NULL);
    CHECK_STR(c->id, "42");
    CHECK_INT(c->size, 1500);
}
