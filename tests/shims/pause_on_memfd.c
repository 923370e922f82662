/* LD_PRELOAD shim for tests/test_handoff_seal_race.py: widens a race window
 * to as long as the test likes, without touching fastipc's code.
 *
 * After fstat() or fcntl(F_GET_SEALS) on a memfd whose /proc/self/fd link
 * starts with $PAUSE_MEMFD, the calling thread writes one byte ('F' or 'S')
 * to fd $PAUSE_W and blocks until it reads one from fd $PAUSE_R: the test
 * acts (shrinks and seals the memfd, as a hostile sender could at any
 * instant) between the call and whatever the receiver does next with what
 * it returned. Every other call goes straight through. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int is_target(int fd)
{
    const char *want = getenv("PAUSE_MEMFD");
    char path[64], link[256];
    if (!want)
        return 0;
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(path, link, sizeof link - 1);
    if (n < 0)
        return 0;
    link[n] = 0;
    return strncmp(link, want, strlen(want)) == 0;
}

static void pause_here(int fd, char what)
{
    if (!is_target(fd))
        return;
    char c;
    if (write(atoi(getenv("PAUSE_W")), &what, 1) != 1 || read(atoi(getenv("PAUSE_R")), &c, 1) != 1)
        _exit(99);
}

typedef int (*fstat_fn)(int, struct stat *);
typedef int (*fstat64_fn)(int, struct stat64 *);
typedef int (*fcntl_fn)(int, int, ...);

#define REAL(name, type) \
    static type real_##name; \
    if (!real_##name) \
    real_##name = (type)dlsym(RTLD_NEXT, #name)

int fstat(int fd, struct stat *st)
{
    REAL(fstat, fstat_fn);
    int rc = real_fstat(fd, st);
    pause_here(fd, 'F');
    return rc;
}

int fstat64(int fd, struct stat64 *st)
{
    REAL(fstat64, fstat64_fn);
    int rc = real_fstat64(fd, st);
    pause_here(fd, 'F');
    return rc;
}

static int seals_call(fcntl_fn real, int fd, int cmd, void *arg)
{
    int rc = real(fd, cmd, arg);
    if (cmd == F_GET_SEALS)
        pause_here(fd, 'S');
    return rc;
}

int fcntl(int fd, int cmd, ...)
{
    va_list ap;
    va_start(ap, cmd);
    void *arg = va_arg(ap, void *);
    va_end(ap);
    REAL(fcntl, fcntl_fn);
    return seals_call(real_fcntl, fd, cmd, arg);
}

int fcntl64(int fd, int cmd, ...)
{
    va_list ap;
    va_start(ap, cmd);
    void *arg = va_arg(ap, void *);
    va_end(ap);
    REAL(fcntl64, fcntl_fn);
    return seals_call(real_fcntl64, fd, cmd, arg);
}
