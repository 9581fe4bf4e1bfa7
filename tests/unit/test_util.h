/* Helpers shared by the unit tests: where the reference data and the built
 * binaries are, and starting a service binary and connecting to it. */
#ifndef INFERNO_TEST_UTIL_H
#define INFERNO_TEST_UTIL_H

#include <limits.h>
#include <nng/nng.h>
#include <nng/protocol/reqrep0/req.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ../shared/reference/NAME, or under $INFERNO_REFERENCE_DIR. Four rotating
 * buffers, so a few results may be alive at once. */
static inline const char *ref_path(const char *name) {
    static char buf[4][512];
    static int k;
    char *out = buf[k++ % 4];
    const char *dir = getenv("INFERNO_REFERENCE_DIR");
    snprintf(out, sizeof buf[0], "%s/%s", dir ? dir : "../shared/reference", name);
    return out;
}

/* A binary of the same build as this test (build/<cfg>/tests -> build/<cfg>/bin). */
static inline const char *bin_path(const char *name) {
    static char exe[PATH_MAX], out[PATH_MAX + 64];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    exe[n > 0 ? n : 0] = 0;
    char *slash = strrchr(exe, '/');
    if (slash)
        *slash = 0;
    snprintf(out, sizeof out, "%s/../bin/%s", exe, name);
    return out;
}

/* Starts argv[0] and returns a REQ socket dialled to url once the service
 * listens (it takes a moment to load its model); -1 on failure. */
static inline int spawn_and_dial(char *const argv[], const char *url, pid_t *pid, nng_socket *s) {
    if (posix_spawn(pid, argv[0], NULL, NULL, argv, NULL) || nng_req0_open(s))
        return -1;
    nng_socket_set_ms(*s, NNG_OPT_RECVTIMEO, 10000);
    for (int tries = 0; tries < 200; tries++) {
        if (nng_dial(*s, url, NULL, 0) == 0)
            return 0;
        usleep(50000);
    }
    return -1;
}

#endif
