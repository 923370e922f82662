"""What the machine itself gives, measured in the same run as the peers: one core's memcpy and a bare C SPSC ring.

Every row of the peers report is also read against these: no transport can
move 1 MiB messages faster than one core copies them, nor small messages
between two processes faster than a C ring with no syscall, no Python and no
checks. The C program is compiled here with the system's ``cc`` (into a
temporary directory, once per run); without a compiler the C rows are
reported as skipped.

``spsc``   two processes (pinned to distinct CPUs where allowed), a ring of
           64-byte slots (4096 of them, 256 KiB like the small figures'
           capacity) in a shared mapping, each message copied in and out,
           the sides spinning on two counters: messages per second.
``mib``    the same with four 1 MiB slots: GB/s, the receiver copying each
           message out (the bound of the "1 MiB read" figure).
``rtt``    one 64-byte message each way through two such rings, spinning:
           median and p99 round trip in microseconds.
``memcpy`` 1 MiB copies in one process (Python's memoryview slice
           assignment: one memcpy each) into a 4 MiB area in turn: GB/s.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from typing import Any

__all__ = ["C_SOURCE", "Baseline", "memcpy_gb_s"]

C_SOURCE = r"""
#define _GNU_SOURCE
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static uint64_t ns(void) {
    struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}
static void relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ volatile("yield");
#endif
}
static void pin(int cpu) {
    if (cpu < 0) return;
    cpu_set_t s; CPU_ZERO(&s); CPU_SET(cpu, &s); sched_setaffinity(0, sizeof s, &s);
}
/* Copies in 64 KiB pieces: glibc's memcpy switches to non-temporal stores for
 * one call above a cache-size threshold, which sends a 1 MiB message past the
 * cache to DRAM and makes the other core read it from there. */
static void copy(char *dst, const char *src, size_t n) {
    for (size_t off = 0; off < n; off += 65536)
        memcpy(dst + off, src + off, n - off < 65536 ? n - off : 65536);
}
struct ring { uint64_t head; char pad1[56]; uint64_t tail; char pad2[56]; uint64_t done; char pad3[56]; };
static int cmp(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b; return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
    if (argc != 5) { fprintf(stderr, "usage: spsc|mib|rtt SECONDS CPU_A CPU_B\n"); return 2; }
    const char *mode = argv[1];
    double secs = atof(argv[2]);
    int cpu_a = atoi(argv[3]), cpu_b = atoi(argv[4]);
    int big = strcmp(mode, "mib") == 0, rtt = strcmp(mode, "rtt") == 0;
    size_t slot = big ? (1u << 20) : 64u, slots = big ? 4u : 4096u;
    size_t ringsz = 4096 + slot * slots;
    char *shm = mmap(NULL, 2 * ringsz, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (shm == MAP_FAILED) { perror("mmap"); return 1; }
    struct ring *r[2] = {(struct ring *)(void *)shm, (struct ring *)(void *)(shm + ringsz)};
    char *data[2] = {shm + 4096, shm + ringsz + 4096};
    char *msg = malloc(slot), *out = malloc(slot);
    if (!msg || !out) return 1;
    memset(msg, 'M', slot); memset(out, 0, slot);
    uint64_t end_ns = ns() + (uint64_t)(secs * 1e9);
    pid_t pid = fork();
    if (pid < 0) { perror("fork"); return 1; }
    if (pid == 0) {  /* producer, or the echo side */
        pin(cpu_a);
        uint64_t s = 0;
        if (rtt) {
            for (;;) {
                while (__atomic_load_n(&r[0]->head, __ATOMIC_ACQUIRE) == s) {
                    if (__atomic_load_n(&r[0]->done, __ATOMIC_ACQUIRE)) _exit(0);
                    relax();
                }
                memcpy(out, data[0], slot);
                memcpy(data[1], out, slot);
                s++;
                __atomic_store_n(&r[1]->head, s, __ATOMIC_RELEASE);
            }
        }
        while (ns() < end_ns) {
            for (int k = 0; k < 64; k++) {
                while (s - __atomic_load_n(&r[0]->tail, __ATOMIC_ACQUIRE) >= slots) relax();
                copy(data[0] + (s % slots) * slot, msg, slot);
                __atomic_store_n(&r[0]->head, ++s, __ATOMIC_RELEASE);
            }
        }
        __atomic_store_n(&r[0]->done, 1, __ATOMIC_RELEASE);
        _exit(0);
    }
    pin(cpu_b);
    if (rtt) {
        size_t cap = 1u << 22, n = 0;
        uint64_t *lat = malloc(cap * sizeof *lat);
        if (!lat) return 1;
        uint64_t warm = ns() + (uint64_t)(secs * 1e8);
        for (uint64_t s = 1;; s++) {
            uint64_t t0 = ns();
            memcpy(data[0], msg, slot);
            __atomic_store_n(&r[0]->head, s, __ATOMIC_RELEASE);
            while (__atomic_load_n(&r[1]->head, __ATOMIC_ACQUIRE) != s) relax();
            memcpy(out, data[1], slot);
            uint64_t t1 = ns();
            if (t0 > warm && n < cap) lat[n++] = t1 - t0;
            if (t1 > end_ns + (uint64_t)(secs * 1e8)) break;
        }
        __atomic_store_n(&r[0]->done, 1, __ATOMIC_RELEASE);
        waitpid(pid, NULL, 0);
        qsort(lat, n, sizeof *lat, cmp);
        printf("{\"median_us\": %.4f, \"p99_us\": %.4f, \"round_trips\": %zu}\n",
               n ? lat[n / 2] / 1e3 : 0.0, n ? lat[(size_t)(n * 0.99)] / 1e3 : 0.0, n);
        return 0;
    }
    uint64_t t = 0, first = 0;
    volatile char sink = 0;
    for (;;) {
        while (__atomic_load_n(&r[0]->head, __ATOMIC_ACQUIRE) == t) {
            if (__atomic_load_n(&r[0]->done, __ATOMIC_ACQUIRE) && __atomic_load_n(&r[0]->head, __ATOMIC_ACQUIRE) == t)
                goto out;
            relax();
        }
        copy(out, data[0] + (t % slots) * slot, slot);
        sink ^= out[0];
        __atomic_store_n(&r[0]->tail, ++t, __ATOMIC_RELEASE);
        if (t == 1) first = ns();
    }
out:
    (void)sink;
    {
        uint64_t took = ns() - first;
        waitpid(pid, NULL, 0);
        double rate = took && t > 1 ? (double)(t - 1) / (took / 1e9) : 0.0;
        printf("{\"msgs_s\": %.1f, \"gb_s\": %.4f}\n", rate, rate * (double)slot / 1e9);
    }
    return 0;
}
"""


class Baseline:
    """The bare C SPSC ring, compiled once; :meth:`run` one mode; :meth:`close` removes the build."""

    def __init__(self) -> None:
        self.dir: str | None = None
        self.exe: str | None = None
        self.why: str | None = None
        cc = shutil.which("cc") or shutil.which("gcc")
        if cc is None:
            self.why = "no C compiler (cc) to build the bare C ring"
            return
        self.dir = tempfile.mkdtemp(prefix="fastipc-bench-c.")
        src = os.path.join(self.dir, "spsc.c")
        with open(src, "w") as f:
            f.write(C_SOURCE)
        exe = os.path.join(self.dir, "spsc")
        proc = subprocess.run(
            [cc, "-O2", "-o", exe, src], capture_output=True, text=True, timeout=120, check=False
        )
        if proc.returncode != 0:
            self.why = "the bare C ring did not compile: " + (proc.stderr.strip()[-200:] or "?")
        else:
            self.exe = exe

    def run(self, mode: str, seconds: float, cpus: tuple[int | None, int | None]) -> dict[str, Any]:
        """Run ``mode`` (spsc, mib, rtt) for ``seconds``; its figure, or {"skipped": why}."""
        if self.exe is None:
            return {"skipped": self.why or "not built"}
        a, b = (-1 if c is None else c for c in cpus)
        proc = subprocess.run(
            [self.exe, mode, str(seconds), str(a), str(b)],
            capture_output=True,
            text=True,
            timeout=60 + 4 * seconds,
            check=False,
        )
        if proc.returncode != 0:
            return {"error": proc.stderr.strip()[-200:] or f"exit status {proc.returncode}"}
        result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
        return result

    def close(self) -> None:
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None


def memcpy_gb_s(seconds: float, cpu: int | None = None) -> float:
    """One core's 1 MiB memcpy rate in GB/s (1e9 bytes/s), in this process."""
    old = os.sched_getaffinity(0)
    if cpu is not None:
        try:
            os.sched_setaffinity(0, {cpu})
        except OSError:
            pass
    try:
        src = b"M" * (1 << 20)
        area = memoryview(bytearray(4 << 20))
        slots = [area[i << 20 : (i + 1) << 20] for i in range(4)]
        for dst in slots:  # fault the pages in first
            dst[:] = src
        count = 0
        t0 = time.perf_counter()
        end = t0 + seconds
        while time.perf_counter() < end:
            for dst in slots:
                dst[:] = src
            count += 4
        return count * (1 << 20) / (time.perf_counter() - t0) / 1e9
    finally:
        os.sched_setaffinity(0, old)
