/* The course's signal peer: sigqueue(3) to send an int with a signal, sigaction(SA_SIGINFO) to receive.
 *
 *   sig_peer send PID SIGNO VALUE [COUNT]  queue COUNT signals carrying VALUE, VALUE+1, ...;
 *                                          prints "sent N", or "error ERRNO" at the first failure
 *   sig_peer recv SIGNO COUNT              prints "ready PID", then "SIGNO VALUE PID UID CODE"
 *                                          for each of COUNT signals caught by a handler
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_CAUGHT 1024

static volatile sig_atomic_t caught;
static siginfo_t infos[MAX_CAUGHT];

static void on_signal(int signo, siginfo_t *info, void *ctx)
{
    (void)signo;
    (void)ctx;
    if (caught < MAX_CAUGHT)
        infos[caught] = *info;
    caught++;
}

static int do_send(int argc, char **argv)
{
    if (argc < 5)
        return 2;
    pid_t pid = (pid_t)atoi(argv[2]);
    int signo = atoi(argv[3]);
    int value = atoi(argv[4]);
    int count = argc > 5 ? atoi(argv[5]) : 1;
    for (int i = 0; i < count; i++) {
        union sigval sv;
        sv.sival_int = value + i;
        if (sigqueue(pid, signo, sv) < 0) {
            printf("error %d %d\n", errno, i);
            return 0;
        }
    }
    printf("sent %d\n", count);
    return 0;
}

static int do_recv(int argc, char **argv)
{
    if (argc < 4)
        return 2;
    int signo = atoi(argv[2]);
    int count = atoi(argv[3]);
    if (count > MAX_CAUGHT)
        return 2;
    sigset_t block, wait_mask;
    sigemptyset(&block);
    sigaddset(&block, signo);
    /* Blocked until we sleep in sigsuspend, so none is caught between checks. */
    if (sigprocmask(SIG_BLOCK, &block, &wait_mask) < 0)
        return 1;
    sigdelset(&wait_mask, signo);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_signal;
    sa.sa_flags = SA_SIGINFO;
    sigemptyset(&sa.sa_mask);
    if (sigaction(signo, &sa, NULL) < 0)
        return 1;
    printf("ready %d\n", (int)getpid());
    fflush(stdout);
    while (caught < count)
        sigsuspend(&wait_mask);
    for (int i = 0; i < count; i++)
        printf("%d %d %d %d %d\n", infos[i].si_signo, infos[i].si_value.sival_int,
               (int)infos[i].si_pid, (int)infos[i].si_uid, infos[i].si_code);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "send") == 0)
        return do_send(argc, argv);
    if (argc > 1 && strcmp(argv[1], "recv") == 0)
        return do_recv(argc, argv);
    fprintf(stderr, "usage: sig_peer send PID SIGNO VALUE [COUNT] | recv SIGNO COUNT\n");
    return 2;
}
