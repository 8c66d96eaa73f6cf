/* No heap growth across 1,000 rotations: the rotation state machine (fetch, write next, token,
 * ack, promote) with its real cJSON parsing, hashing and token handling, against the fakes.
 * glibc's mallinfo2() counts the bytes in use before and after. */
#include <malloc.h>
#include <string.h>

#include "check.h"
#include "fakes.h"

static fake_store_t H_st;
static fake_server_t H_sv;
static fake_port_t H_port;
static fake_device_t H_d;

static bool rotate_n(int n)
{
    for (int i = 0; i < n; i++) {
        fake_server_trigger(&H_sv);
        mdm_err_t e = {0};
        if (mdm_rotation_run(&H_d.m, &e) != MDM_DONE || H_sv.pending) {
            return false;
        }
        H_d.n_events = 0;
    }
    return true;
}

TEST(heap_does_not_grow_across_1000_rotations)
{
    for (int mode = FAKE_GRACE; mode <= FAKE_RESTORE; mode++) {
        fake_store_provision(&H_st, "s0");
        fake_server_reset(&H_sv, (fake_mode_t)mode, "s0");
        fake_port_reset(&H_port, "1.0.0");
        CHECK_INT(fake_device_init(&H_d, &H_st, &H_sv, &H_port), ESP_OK);
        mdm_err_t e = {0};
        CHECK_INT(mdm_prov_load(&H_d.m, &e), MDM_DONE);
        CHECK_INT(mdm_auth(&H_d.m, &e), MDM_DONE);
        CHECK(rotate_n(20)); /* warm-up: PSA, cJSON hooks */
        size_t before = mallinfo2().uordblks;
        CHECK(rotate_n(1000));
        size_t after = mallinfo2().uordblks;
        long growth = (long)after - (long)before;
        printf("    heap (%s): %zu bytes in use before, %zu after 1000 rotations (%+ld)\n",
               mode == FAKE_GRACE ? "grace" : "restore", before, after, growth);
        CHECK(growth <= 0);
        CHECK_INT(H_sv.generations, 1020);
        CHECK_STR(H_d.m.prov.secret, H_sv.main);
        fake_device_free(&H_d);
    }
}
