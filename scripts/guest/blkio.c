/* blkio: timed O_DIRECT block I/O for the guest's disk benchmark (tests/diskbench); busybox dd
 * cannot do random offsets.
 *
 *   blkio DEV MODE BS FIRST COUNT
 *
 * MODE: seqread | seqwrite | randread | randwrite. Moves COUNT blocks of BS bytes, starting at
 * block FIRST of DEV (block-sized units). The random modes visit each of the COUNT blocks exactly
 * once, in a shuffled order (a fixed seed, so every run and every VMM sees the same order): a
 * randwrite over blocks nobody wrote before is a run of first writes, the same call again a run
 * of rewrites. Writes end with fdatasync (a FLUSH), inside the timed part. The data written is
 * a non-zero pattern, so that no layer can store it as a hole.
 * Prints one line:  blkio MODE bs=BS count=COUNT secs=S mib_s=X iops=Y
 * Exits 1 with "blkio: ..." on any error. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static void die(const char *what) {
    fprintf(stderr, "blkio: %s: %s\n", what, strerror(errno));
    exit(1);
}

static uint64_t parse(const char *s, const char *what) {
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end || end == s) {
        fprintf(stderr, "blkio: bad %s %s\n", what, s);
        exit(1);
    }
    return v;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: blkio DEV seqread|seqwrite|randread|randwrite BS FIRST COUNT\n");
        return 2;
    }
    const char *mode = argv[2];
    uint64_t bs = parse(argv[3], "block size"), first = parse(argv[4], "first block"),
             count = parse(argv[5], "count");
    int write = !strcmp(mode, "seqwrite") || !strcmp(mode, "randwrite");
    int random = !strcmp(mode, "randread") || !strcmp(mode, "randwrite");
    if (!write && !random && strcmp(mode, "seqread")) {
        fprintf(stderr, "blkio: unknown mode %s\n", mode);
        return 2;
    }
    if (bs == 0 || bs % 512 || count == 0) {
        fprintf(stderr, "blkio: BS must be a non-zero multiple of 512, COUNT non-zero\n");
        return 2;
    }
    int fd = open(argv[1], (write ? O_RDWR : O_RDONLY) | O_DIRECT);
    if (fd < 0) die(argv[1]);
    void *buf;
    if (posix_memalign(&buf, 4096, bs)) die("posix_memalign");
    memset(buf, 0x5a, bs);
    uint64_t *order = malloc(count * sizeof *order);
    if (!order) die("malloc");
    for (uint64_t i = 0; i < count; i++) order[i] = i;
    if (random) { /* Fisher-Yates with a fixed xorshift64 seed */
        uint64_t x = 0x9e3779b97f4a7c15ull;
        for (uint64_t i = count - 1; i > 0; i--) {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            uint64_t j = x % (i + 1), t = order[i];
            order[i] = order[j], order[j] = t;
        }
    }
    double t0 = now();
    for (uint64_t i = 0; i < count; i++) {
        off_t off = (off_t)((first + order[i]) * bs);
        ((uint64_t *)buf)[0] = first + order[i] + 1; /* every block differs */
        ssize_t n = write ? pwrite(fd, buf, bs, off) : pread(fd, buf, bs, off);
        if (n != (ssize_t)bs) {
            if (n >= 0) errno = EIO;
            die(write ? "pwrite" : "pread");
        }
    }
    if (write && fdatasync(fd)) die("fdatasync");
    double secs = now() - t0;
    if (secs < 1e-6) secs = 1e-6;
    printf("blkio %s bs=%llu count=%llu secs=%.3f mib_s=%.2f iops=%.0f\n", mode,
           (unsigned long long)bs, (unsigned long long)count, secs,
           (double)(bs * count) / (1 << 20) / secs, count / secs);
    return 0;
}
