/* Signals as messages: sigqueue(2) to send one with an int payload, signalfd(2) to read them. */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <sys/types.h>
#include <unistd.h>

#include "fastipc.h"

int fi_sigqueue(int pid, int signo, int value)
{
    union sigval sv;
    sv.sival_ptr = NULL; /* the whole union zeroed: the receiver may read sival_ptr */
    sv.sival_int = value;
    if (sigqueue((pid_t)pid, signo, sv) < 0)
        return -errno;
    return 0;
}

int fi_signalfd(const int *signos, size_t n)
{
    sigset_t set;
    if (sigemptyset(&set) < 0)
        return -errno;
    for (size_t i = 0; i < n; i++)
        if (sigaddset(&set, signos[i]) < 0)
            return -errno;
    int fd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
    if (fd < 0)
        return -errno;
    return fd;
}
