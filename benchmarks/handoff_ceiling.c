/* The bound of the Channel's 1 MiB hand-off on this machine, with no fastipc in it.
 *
 * Two processes move 1 MiB messages through four 1 MiB slots of a shared
 * mapping, as the hand-off moves them through its area: the sender copies
 * each message in, the receiver takes it out. Nothing else happens: no
 * syscall, no Python, the two sides spin on two counters. So this is what
 * the hand-off could reach if its own costs (the descriptor's sendmsg and
 * recvmsg, the Python calls, wake-ups) were zero.
 *
 *   handoff_ceiling copy SECONDS   the receiver copies each message out (mib1)
 *   handoff_ceiling view SECONDS   the receiver reads its first and last byte
 *                                  in place (mib1_view)
 *
 * Prints {"gb_s": ...}: bytes the receiver took after its first message,
 * over the time since then. Built and run by handoff_ceiling.py.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define SLOT (1u << 20)
#define SLOTS 4u

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static void relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ volatile("yield");
#endif
}

int main(int argc, char **argv)
{
    if (argc != 3 || (strcmp(argv[1], "copy") && strcmp(argv[1], "view"))) {
        fprintf(stderr, "usage: %s copy|view SECONDS\n", argv[0]);
        return 2;
    }
    int copy = strcmp(argv[1], "copy") == 0;
    double duration = atof(argv[2]);
    /* three counters on their own cache lines, then the slots */
    char *shm = mmap(NULL, 4096 + SLOTS * SLOT, PROT_READ | PROT_WRITE,
                     MAP_SHARED | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (shm == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    uint64_t *sent = (uint64_t *)(void *)shm, *taken = sent + 8, *done = sent + 16;
    char *slots = shm + 4096;
    pid_t pid = fork();
    if (pid < 0) {
        perror("fork");
        return 1;
    }
    if (pid == 0) {
        char *src = malloc(SLOT);
        if (!src)
            _exit(1);
        memset(src, 'M', SLOT);
        uint64_t s = 0;
        double end = now() + duration;
        while (now() < end) {
            while (s - __atomic_load_n(taken, __ATOMIC_ACQUIRE) >= SLOTS)
                relax();
            memcpy(slots + (s % SLOTS) * SLOT, src, SLOT);
            __atomic_store_n(sent, ++s, __ATOMIC_RELEASE);
        }
        __atomic_store_n(done, 1, __ATOMIC_RELEASE);
        _exit(0);
    }
    char *dst = malloc(SLOT);
    if (!dst)
        return 1;
    memset(dst, 0, SLOT);
    uint64_t t = 0, bytes = 0;
    volatile char sink = 0;
    double first = 0;
    for (;;) {
        while (__atomic_load_n(sent, __ATOMIC_ACQUIRE) == t) {
            if (__atomic_load_n(done, __ATOMIC_ACQUIRE) && __atomic_load_n(sent, __ATOMIC_ACQUIRE) == t)
                goto out;
            relax();
        }
        const char *msg = slots + (t % SLOTS) * SLOT;
        if (copy)
            memcpy(dst, msg, SLOT);
        else
            sink = (char)(msg[0] ^ msg[SLOT - 1]);
        __atomic_store_n(taken, ++t, __ATOMIC_RELEASE);
        if (t == 1)
            first = now();
        else
            bytes += SLOT;
    }
out:
    (void)sink;
    waitpid(pid, NULL, 0);
    double took = now() - first;
    printf("{\"gb_s\": %.3f}\n", took > 0 ? (double)bytes / took / 1e9 : 0.0);
    return 0;
}
