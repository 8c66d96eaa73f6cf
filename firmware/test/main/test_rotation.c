/* The boot slot choice and the rotation steps of SPEC §4 against a server that plays Keycloak
 * and espmdm in both modes, with a crash (everything uncommitted lost) at every named step. */
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "fakes.h"
#include "nvs.h"

typedef struct {
    fake_store_t st;
    fake_server_t sv;
    fake_port_t port;
    fake_device_t d;
} rig_t;

static rig_t R;

static void rig_new(fake_mode_t mode)
{
    fake_device_free(&R.d);
    fake_store_provision(&R.st, "s0");
    fake_server_reset(&R.sv, mode, "s0");
    fake_port_reset(&R.port, "1.0.0");
    fake_device_init(&R.d, &R.st, &R.sv, &R.port);
}

/* A power cut: what was not committed is lost; a new process starts on the store. */
static void rig_reboot(void)
{
    fake_store_crash(&R.st);
    fake_device_free(&R.d);
    fake_device_init(&R.d, &R.st, &R.sv, &R.port);
}

static const char *cur(void)
{
    return fake_store_get(&R.st, "prov", "client_secret");
}

static const char *nxt(void)
{
    return fake_store_get(&R.st, "prov", MDM_KEY_SECRET_NEXT);
}

/* Does a secret the device holds (durably) work? */
static bool holds_working_secret(void)
{
    return fake_server_accepts(&R.sv, cur()) || fake_server_accepts(&R.sv, nxt());
}

/* Boots (provisioning, boot slot choice, the promoted secret's ack); true when it crashed at
 * crash_at. *res: the auth's result. */
static bool boot(espmdm_step_t crash_at, mdm_res_t *res)
{
    R.d.crash_at = crash_at;
    if (setjmp(R.d.crash) != 0) {
        return true;
    }
    mdm_err_t e = {0};
    *res = mdm_prov_load(&R.d.m, &e);
    if (*res == MDM_DONE) {
        *res = mdm_auth(&R.d.m, &e);
    }
    if (*res == MDM_DONE && R.d.m.jobs[MDM_JOB_ACK_PROMOTED].pending) {
        R.d.m.jobs[MDM_JOB_ACK_PROMOTED].pending = false;
        mdm_ack_promoted(&R.d.m, &e);
    }
    if (*res == MDM_DONE) {
        mdm_config_run(&R.d.m, &e); /* what firmware does at start */
    }
    R.d.crash_at = ESPMDM_STEP_COUNT;
    return false;
}

static bool rotate(espmdm_step_t crash_at, mdm_res_t *res)
{
    R.d.crash_at = crash_at;
    if (setjmp(R.d.crash) != 0) {
        return true;
    }
    mdm_err_t e = {0};
    *res = mdm_rotation_run(&R.d.m, &e);
    R.d.crash_at = ESPMDM_STEP_COUNT;
    return false;
}

TEST(boot_uses_current_when_keycloak_accepts_it)
{
    rig_new(FAKE_GRACE);
    mdm_res_t res;
    CHECK(!boot(ESPMDM_STEP_COUNT, &res));
    CHECK_INT(res, MDM_DONE);
    const espmdm_event_boot_t *b = fake_device_last(&R.d, ESPMDM_EVENT_BOOT);
    CHECK(b != NULL);
    CHECK_INT(b->slot, ESPMDM_SLOT_CURRENT);
    CHECK_STR(b->client_id, FAKE_CLIENT_ID);
    CHECK_INT(fake_device_count(&R.d, ESPMDM_EVENT_PROMOTED), 0);
    CHECK_INT(R.sv.token_requests, 1);
    CHECK(fake_device_last(&R.d, ESPMDM_EVENT_CONFIG) != NULL);
}

TEST(boot_promotes_next_at_once_when_only_next_works)
{
    rig_new(FAKE_RESTORE);
    strcpy(R.sv.main, "s1");
    fake_store_t *st = &R.st;
    fake_store_ops.set_str(st, "prov", MDM_KEY_SECRET_NEXT, "s1");
    fake_store_ops.commit(st, "prov");
    strcpy(R.sv.completed_with, "s1");
    rig_reboot();
    mdm_res_t res;
    CHECK(!boot(ESPMDM_STEP_COUNT, &res));
    CHECK_INT(res, MDM_DONE);
    const espmdm_event_boot_t *b = fake_device_last(&R.d, ESPMDM_EVENT_BOOT);
    CHECK(b != NULL);
    CHECK_INT(b->slot, ESPMDM_SLOT_NEXT);
    /* committed: a crash right after keeps it */
    fake_store_crash(&R.st);
    CHECK_STR(cur(), "s1");
    CHECK_STR(nxt(), "");
    const espmdm_event_rotation_t *p = fake_device_last(&R.d, ESPMDM_EVENT_PROMOTED);
    CHECK(p != NULL && p->at_boot);
    CHECK_INT(R.sv.acks, 1); /* and acked (204 here) */
    CHECK_INT(R.sv.acks_204, 1);
}

TEST(boot_promotion_stands_when_the_ack_answers_409)
{
    rig_new(FAKE_GRACE);
    strcpy(R.sv.main, "s1"); /* the old one expired; nothing completed with s1 */
    fake_store_ops.set_str(&R.st, "prov", MDM_KEY_SECRET_NEXT, "s1");
    fake_store_ops.commit(&R.st, "prov");
    rig_reboot();
    mdm_res_t res;
    CHECK(!boot(ESPMDM_STEP_COUNT, &res));
    CHECK_INT(res, MDM_DONE);
    CHECK_INT(R.sv.acks_409, 1);
    CHECK_STR(cur(), "s1");
    CHECK_STR(nxt(), "");
}

TEST(boot_with_both_secrets_refused_retries_and_keeps_both)
{
    rig_new(FAKE_GRACE);
    strcpy(R.sv.main, "other");
    fake_store_ops.set_str(&R.st, "prov", MDM_KEY_SECRET_NEXT, "s1");
    fake_store_ops.commit(&R.st, "prov");
    rig_reboot();
    mdm_err_t e = {0};
    CHECK_INT(mdm_prov_load(&R.d.m, &e), MDM_DONE);
    CHECK_INT(mdm_auth(&R.d.m, &e), MDM_RETRY);
    CHECK(strstr(e.message, "refused both secrets") != NULL);
    CHECK(strstr(e.message, "s0") == NULL && strstr(e.message, "s1") == NULL);
    CHECK_STR(cur(), "s0");
    CHECK_STR(nxt(), "s1");
    CHECK_INT(fake_device_count(&R.d, ESPMDM_EVENT_BOOT), 0);
}

TEST(boot_never_tries_next_when_keycloak_is_unreachable)
{
    rig_new(FAKE_GRACE);
    fake_store_ops.set_str(&R.st, "prov", MDM_KEY_SECRET_NEXT, "s1");
    fake_store_ops.commit(&R.st, "prov");
    R.sv.keycloak_down = true;
    rig_reboot();
    mdm_err_t e = {0};
    CHECK_INT(mdm_prov_load(&R.d.m, &e), MDM_DONE);
    CHECK_INT(mdm_auth(&R.d.m, &e), MDM_RETRY);
    CHECK(strstr(e.message, "unreachable") != NULL);
    CHECK_STR(cur(), "s0");
    CHECK_STR(nxt(), "s1");
}

TEST(boot_with_a_deleted_client_retries)
{
    rig_new(FAKE_GRACE);
    R.sv.client_deleted = true;
    mdm_err_t e = {0};
    CHECK_INT(mdm_prov_load(&R.d.m, &e), MDM_DONE);
    CHECK_INT(mdm_auth(&R.d.m, &e), MDM_RETRY);
    CHECK_INT(e.op, ESPMDM_OP_TOKEN);
    CHECK_INT(e.http_status, 401);
    CHECK(strstr(e.message, "refused") != NULL);
}

TEST(provisioning_errors_are_reported_not_guessed)
{
    rig_new(FAKE_GRACE);
    mdm_err_t e = {0};
    R.st.open_err = ESP_ERR_NVS_NOT_FOUND;
    CHECK_INT(mdm_prov_load(&R.d.m, &e), MDM_RETRY);
    CHECK(strstr(e.message, "namespace 'prov'") != NULL);
    R.st.open_err = ESP_OK;
    fake_store_ops.erase(&R.st, "prov", "token_url");
    fake_store_ops.commit(&R.st, "prov");
    CHECK_INT(mdm_prov_load(&R.d.m, &e), MDM_RETRY);
    CHECK(strstr(e.message, "prov/token_url is missing") != NULL);
    rig_new(FAKE_GRACE);
    char big[200];
    memset(big, 'x', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    fake_store_ops.set_str(&R.st, "prov", "client_secret", big);
    fake_store_ops.commit(&R.st, "prov");
    CHECK_INT(mdm_prov_load(&R.d.m, &e), MDM_RETRY);
    CHECK(strstr(e.message, "longer than") != NULL);
    CHECK(strstr(e.message, "xxxx") == NULL);
    rig_new(FAKE_GRACE);
    fake_store_ops.set_str(&R.st, "prov", "device_key", "zzzz9999");
    fake_store_ops.commit(&R.st, "prov");
    CHECK_INT(mdm_prov_load(&R.d.m, &e), MDM_RETRY);
    CHECK(strstr(e.message, "does not end with device_key") != NULL);
}

TEST(rotation_completes_without_crash_in_both_modes)
{
    for (int mode = FAKE_GRACE; mode <= FAKE_RESTORE; mode++) {
        rig_new((fake_mode_t)mode);
        mdm_res_t res;
        CHECK(!boot(ESPMDM_STEP_COUNT, &res) && res == MDM_DONE);
        fake_server_trigger(&R.sv);
        CHECK(!rotate(ESPMDM_STEP_COUNT, &res));
        CHECK_INT(res, MDM_DONE);
        CHECK(!R.sv.pending);
        CHECK_STR(cur(), R.sv.main);
        CHECK_STR(nxt(), "");
        CHECK(!fake_server_accepts(&R.sv, "s0"));
        CHECK_INT(fake_device_count(&R.d, ESPMDM_EVENT_ROTATION_FETCHED), 1);
        CHECK_INT(fake_device_count(&R.d, ESPMDM_EVENT_ROTATION_ACKED), 1);
        CHECK_INT(fake_device_count(&R.d, ESPMDM_EVENT_PROMOTED), 1);
        /* no secret in any event */
        for (int i = 0; i < R.d.n_events; i++) {
            CHECK(memmem(R.d.events[i].data, sizeof(R.d.events[i].data), "gen-", 4) == NULL);
            CHECK(memmem(R.d.events[i].data, sizeof(R.d.events[i].data), "tok-", 4) == NULL);
        }
    }
}

/* Crash sequences: the first crash in the rotation, the next ones at the following boots. */
static const struct {
    espmdm_step_t steps[3];
    int n;
} k_crashes[] = {
    {{ESPMDM_STEP_AFTER_FETCH}, 1},
    {{ESPMDM_STEP_AFTER_WRITE_NEXT}, 1},
    {{ESPMDM_STEP_AFTER_TOKEN_NEXT}, 1},
    {{ESPMDM_STEP_AFTER_ACK}, 1},
    {{ESPMDM_STEP_AFTER_PROMOTE}, 1},
    {{ESPMDM_STEP_AFTER_TOKEN_NEXT, ESPMDM_STEP_BOOT_AFTER_PROMOTE}, 2},
    {{ESPMDM_STEP_AFTER_ACK, ESPMDM_STEP_BOOT_AFTER_PROMOTE}, 2},
};

TEST(a_crash_at_every_step_never_locks_the_device_out)
{
    for (int mode = FAKE_GRACE; mode <= FAKE_RESTORE; mode++) {
        for (size_t c = 0; c < sizeof(k_crashes) / sizeof(k_crashes[0]); c++) {
            rig_new((fake_mode_t)mode);
            mdm_res_t res;
            CHECK(!boot(ESPMDM_STEP_COUNT, &res) && res == MDM_DONE);
            fake_server_trigger(&R.sv);
            int next_crash = 0;
            bool crashed = rotate(k_crashes[c].steps[next_crash++], &res);
            CHECK(crashed);
            for (int round = 0; round < 8 && (crashed || R.sv.pending); round++) {
                if (crashed) {
                    rig_reboot();
                    /* grace: never locked out; restore: only until the attempt times out */
                    if (mode == FAKE_GRACE && !holds_working_secret()) {
                        check_fail(__FILE__, __LINE__, "grace, crash sequence %zu: locked out after a crash", c);
                        return;
                    }
                    espmdm_step_t at = next_crash < k_crashes[c].n ? k_crashes[c].steps[next_crash] : ESPMDM_STEP_COUNT;
                    crashed = boot(at, &res);
                    if (crashed) {
                        next_crash++;
                        continue;
                    }
                    if (res != MDM_DONE) {
                        CHECK_INT(mode, FAKE_RESTORE);
                        fake_server_timeout(&R.sv); /* the old secret comes back */
                        CHECK(holds_working_secret());
                        CHECK(!boot(ESPMDM_STEP_COUNT, &res));
                        CHECK_INT(res, MDM_DONE);
                        fake_server_trigger(&R.sv); /* the retry attempt */
                    }
                }
                if (R.sv.pending) {
                    /* the (re)nudge */
                    crashed = rotate(ESPMDM_STEP_COUNT, &res);
                }
            }
            if (R.sv.pending || crashed) {
                check_fail(__FILE__, __LINE__, "mode %d, crash sequence %zu: the rotation did not complete", mode, c);
                return;
            }
            /* A final reboot: a token with what the device holds, in its current slot. */
            rig_reboot();
            CHECK(!boot(ESPMDM_STEP_COUNT, &res));
            CHECK_INT(res, MDM_DONE);
            const espmdm_event_boot_t *b = fake_device_last(&R.d, ESPMDM_EVENT_BOOT);
            CHECK(b != NULL && b->slot == ESPMDM_SLOT_CURRENT);
            CHECK_STR(cur(), R.sv.main);
            CHECK_STR(nxt(), "");
            CHECK(!fake_server_accepts(&R.sv, "s0"));
        }
    }
}

/* Review finding F1: a crash after writing next, a reboot, then a second rotation cut off past
 * its timeout in restore mode. Promotion at boot keeps the secret the restore gives back. */
TEST(f1_second_rotation_past_the_timeout_keeps_a_working_secret)
{
    rig_new(FAKE_RESTORE);
    mdm_res_t res;
    CHECK(!boot(ESPMDM_STEP_COUNT, &res) && res == MDM_DONE);
    fake_server_trigger(&R.sv);
    CHECK(rotate(ESPMDM_STEP_AFTER_WRITE_NEXT, &res));
    rig_reboot();
    CHECK(!boot(ESPMDM_STEP_COUNT, &res));
    CHECK_INT(res, MDM_DONE);
    CHECK(!R.sv.pending); /* promoted at boot and acked */
    char s1[64];
    strcpy(s1, cur());
    CHECK_STR(s1, "gen-1-secret");
    /* second rotation: cut off after writing next, and not back before the timeout */
    fake_server_trigger(&R.sv);
    CHECK(rotate(ESPMDM_STEP_AFTER_WRITE_NEXT, &res));
    fake_server_timeout(&R.sv); /* restores s1, the secret the device holds as current */
    rig_reboot();
    CHECK(holds_working_secret());
    CHECK(!boot(ESPMDM_STEP_COUNT, &res));
    CHECK_INT(res, MDM_DONE);
    CHECK_STR(cur(), s1);
    /* the retry attempt overwrites the stale next and completes */
    fake_server_trigger(&R.sv);
    CHECK(!rotate(ESPMDM_STEP_COUNT, &res));
    CHECK_INT(res, MDM_DONE);
    CHECK(!R.sv.pending);
    CHECK_STR(cur(), R.sv.main);
    CHECK_STR(nxt(), "");
}

static void restore_before_token(fake_device_t *d, espmdm_step_t step)
{
    if (step == ESPMDM_STEP_AFTER_WRITE_NEXT) {
        fake_server_timeout(d->server);
    }
}

TEST(a_refused_new_secret_is_dropped_and_current_kept)
{
    rig_new(FAKE_RESTORE);
    mdm_res_t res;
    CHECK(!boot(ESPMDM_STEP_COUNT, &res) && res == MDM_DONE);
    fake_server_trigger(&R.sv);
    R.d.on_step = restore_before_token;
    CHECK(!rotate(ESPMDM_STEP_COUNT, &res));
    R.d.on_step = NULL;
    CHECK_STR(cur(), "s0");
    CHECK_STR(nxt(), "");
    CHECK(holds_working_secret());
    const espmdm_event_error_t *e = fake_device_last(&R.d, ESPMDM_EVENT_ERROR);
    CHECK(e != NULL && strstr(e->message, "refused the fetched secret") != NULL);
}

static void regenerate_before_ack(fake_device_t *d, espmdm_step_t step)
{
    if (step == ESPMDM_STEP_AFTER_TOKEN_NEXT) {
        strcpy(d->server->generated, "someone-elses"); /* the ack will not match */
    }
}

TEST(an_ack_answered_409_erases_next_and_keeps_current)
{
    rig_new(FAKE_GRACE);
    mdm_res_t res;
    CHECK(!boot(ESPMDM_STEP_COUNT, &res) && res == MDM_DONE);
    fake_server_trigger(&R.sv);
    R.d.on_step = regenerate_before_ack;
    CHECK(!rotate(ESPMDM_STEP_COUNT, &res));
    R.d.on_step = NULL;
    CHECK_INT(R.sv.acks_409, 1);
    CHECK_STR(cur(), "s0");
    CHECK_STR(nxt(), "");
    CHECK_INT(fake_device_count(&R.d, ESPMDM_EVENT_PROMOTED), 0);
}

TEST(a_fetch_outside_a_rotation_changes_nothing)
{
    rig_new(FAKE_GRACE);
    fake_store_ops.set_str(&R.st, "prov", MDM_KEY_SECRET_NEXT, "stale");
    fake_store_ops.commit(&R.st, "prov");
    rig_reboot();
    mdm_res_t res;
    CHECK(!boot(ESPMDM_STEP_COUNT, &res) && res == MDM_DONE);
    CHECK(!rotate(ESPMDM_STEP_COUNT, &res));
    CHECK_INT(res, MDM_DONE);
    CHECK_STR(cur(), "s0");
    CHECK_STR(nxt(), ""); /* the stale next is gone, current kept */
    CHECK_INT(R.sv.acks_409, 1); /* acked, and 409 is fine: no rotation waits */
    const espmdm_event_rotation_t *f = fake_device_last(&R.d, ESPMDM_EVENT_ROTATION_FETCHED);
    CHECK(f != NULL && !f->changed);
}

TEST(rotation_with_espmdm_down_retries_and_writes_nothing)
{
    rig_new(FAKE_GRACE);
    mdm_res_t res;
    CHECK(!boot(ESPMDM_STEP_COUNT, &res) && res == MDM_DONE);
    fake_server_trigger(&R.sv);
    R.sv.espmdm_down = true;
    int commits = R.st.commits;
    CHECK(!rotate(ESPMDM_STEP_COUNT, &res));
    CHECK_INT(res, MDM_RETRY);
    CHECK_INT(R.st.commits, commits);
    CHECK_STR(cur(), "s0");
    R.sv.espmdm_down = false;
    CHECK(!rotate(ESPMDM_STEP_COUNT, &res));
    CHECK_INT(res, MDM_DONE);
    CHECK(!R.sv.pending);
}

TEST(a_fetched_mqtt_password_is_stored)
{
    rig_new(FAKE_GRACE);
    strcpy(R.sv.mqtt_password, "broker-pw-1");
    mdm_res_t res;
    CHECK(!boot(ESPMDM_STEP_COUNT, &res) && res == MDM_DONE);
    CHECK(!rotate(ESPMDM_STEP_COUNT, &res));
    CHECK_STR(fake_store_get(&R.st, "prov", "mqtt_password"), "broker-pw-1");
    CHECK_STR(R.d.m.prov.mqtt_password, "broker-pw-1");
}

TEST(an_iot_401_renews_the_token_once)
{
    rig_new(FAKE_GRACE);
    mdm_res_t res;
    CHECK(!boot(ESPMDM_STEP_COUNT, &res) && res == MDM_DONE);
    int before = R.sv.token_requests;
    strcpy(R.d.m.token, "tok-999"); /* a token the server does not know (revoked, restarted) */
    mdm_err_t e = {0};
    CHECK_INT(mdm_config_run(&R.d.m, &e), MDM_DONE);
    CHECK_INT(R.sv.token_requests, before + 1);
}

TEST(tokens_are_cached_and_renewed_before_expiry)
{
    rig_new(FAKE_GRACE);
    mdm_res_t res;
    CHECK(!boot(ESPMDM_STEP_COUNT, &res) && res == MDM_DONE);
    int before = R.sv.token_requests;
    mdm_err_t e = {0};
    R.d.now += 200 * 1000; /* 300 s token: still fresh */
    CHECK_INT(mdm_config_run(&R.d.m, &e), MDM_DONE);
    CHECK_INT(R.sv.token_requests, before);
    R.d.now += 75 * 1000; /* 275 s: within the 30 s margin */
    CHECK_INT(mdm_config_run(&R.d.m, &e), MDM_DONE);
    CHECK_INT(R.sv.token_requests, before + 1);
}
