/*
 * vsock-tool: a tiny AF_VSOCK client/server for the test guest (busybox has none).
 * Built static by scripts/build-test-initramfs.sh: gcc -static -O2 -o vsock-tool vsock-tool.c
 *
 *   vsock-tool [-t SECONDS] listen PORT
 *       say "vsock-tool: listening on port PORT" on stderr once listening, then
 *       accept one connection on PORT (any CID), read one line, print
 *       "VSOCK-GUEST-GOT <line>" on stdout, answer "guest-echo:<line>\n", exit 0
 *   vsock-tool [-t SECONDS] connect CID PORT MESSAGE
 *       connect to CID:PORT, send "MESSAGE\n", read one line, print "VSOCK-HOST-REPLY <line>"
 *   vsock-tool [-t SECONDS] send CID PORT BYTES
 *       connect, send BYTES (K/M/G suffixes allowed) zero bytes as fast as possible, close the
 *       sending half, wait for the peer to close (what it sends back is ignored), and print
 *       "VSOCK-SENT <bytes> <microseconds>" (connect done .. peer closed; if the peer does not
 *       close within the timeout: .. last byte written, with a warning on stderr)
 *
 *   vsock-tool [-t SECONDS] tcp-send IPV4 PORT BYTES
 *       the same over TCP (for the network benchmark: busybox nc moves 1 KiB per system call,
 *       this moves 256 KiB), printing "TCP-SENT <bytes> <microseconds> <first reply line>"
 *   vsock-tool [-t SECONDS] tcp-recv IPV4 PORT
 *       connect over TCP, read until the peer closes, print "TCP-RECEIVED <bytes> <microseconds>"
 *
 * -t: timeout for accept, connect, every read and every write (default 10 s). Errors go to
 * stderr as one "vsock-tool: ..." line; exit status 1 for errors, 2 for usage errors.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <linux/vm_sockets.h>

#define MAX_LINE 4096
#define SEND_CHUNK (256 * 1024)

static int timeout_s = 10;

static void usage(const char *why)
{
    if (why)
        fprintf(stderr, "vsock-tool: %s\n", why);
    fprintf(stderr,
            "usage: vsock-tool [-t SECONDS] listen PORT\n"
            "       vsock-tool [-t SECONDS] connect CID PORT MESSAGE\n"
            "       vsock-tool [-t SECONDS] send CID PORT BYTES\n"
            "       vsock-tool [-t SECONDS] tcp-send IPV4 PORT BYTES\n"
            "       vsock-tool [-t SECONDS] tcp-recv IPV4 PORT\n");
    exit(2);
}

static void die(const char *fmt, ...)
{
    va_list ap;
    fputs("vsock-tool: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(1);
}

/* strerror, but a timeout says so */
static const char *err_text(int e)
{
    static char buf[64];
    if (e == EAGAIN || e == EWOULDBLOCK || e == ETIMEDOUT || e == EINPROGRESS) {
        snprintf(buf, sizeof buf, "timed out after %d s", timeout_s);
        return buf;
    }
    return strerror(e);
}

/* decimal (or 0x hex) number with an optional K/M/G suffix (powers of 1024) when allow_suffix */
static unsigned long long parse_num(const char *s, const char *what, unsigned long long max,
                                    int allow_suffix)
{
    char *end;
    unsigned long long v, mul = 1;
    if (!*s || *s == '-' || *s == '+' || *s == ' ')
        goto bad;
    errno = 0;
    v = strtoull(s, &end, 0);
    if (errno || end == s)
        goto bad;
    if (allow_suffix && *end) {
        switch (*end) {
        case 'k': case 'K': mul = 1ULL << 10; break;
        case 'm': case 'M': mul = 1ULL << 20; break;
        case 'g': case 'G': mul = 1ULL << 30; break;
        default: goto bad;
        }
        end++;
    }
    if (*end)
        goto bad;
    if (v > max / mul)
        goto bad;
    return v * mul;
bad:
    {
        char msg[256];
        snprintf(msg, sizeof msg, "bad %s '%s' (a number from 0 to %llu%s)", what, s, max,
                 allow_suffix ? ", K/M/G suffix allowed" : "");
        usage(msg);
    }
    return 0;
}

static void set_timeouts(int fd)
{
    struct timeval tv = { .tv_sec = timeout_s, .tv_usec = 0 };
    if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) < 0 ||
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) < 0)
        die("setsockopt(SO_RCVTIMEO/SO_SNDTIMEO): %s", strerror(errno));
}

static int vsock_socket(void)
{
    int fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        die("socket(AF_VSOCK): %s%s", strerror(errno),
            errno == EAFNOSUPPORT ? " (no vsock support in this kernel, or no vsock device)" : "");
    set_timeouts(fd);
    return fd;
}

static int vsock_connect(unsigned int cid, unsigned int port)
{
    int fd = vsock_socket();
    struct sockaddr_vm addr;
    /* AF_VSOCK's connect() has its own timeout (2 s by default), not SO_SNDTIMEO */
    struct timeval tv = { .tv_sec = timeout_s, .tv_usec = 0 };
    if (setsockopt(fd, AF_VSOCK, SO_VM_SOCKETS_CONNECT_TIMEOUT, &tv, sizeof tv) < 0)
        die("setsockopt(SO_VM_SOCKETS_CONNECT_TIMEOUT): %s", strerror(errno));
    memset(&addr, 0, sizeof addr);
    addr.svm_family = AF_VSOCK;
    addr.svm_cid = cid;
    addr.svm_port = port;
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0)
        die("connect to cid %u port %u: %s", cid, port, err_text(errno));
    return fd;
}

static void write_all(int fd, const char *buf, size_t len, const char *what)
{
    while (len > 0) {
        ssize_t n = write(fd, buf, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die("%s: write: %s", what, err_text(errno));
        }
        buf += n;
        len -= (size_t)n;
    }
}

/* Reads one line (without "\n" / "\r\n") into line. Returns its length; a line cut short by
 * EOF counts if it is not empty. */
static size_t read_line(int fd, char *line, const char *what)
{
    size_t len = 0;
    for (;;) {
        char c;
        ssize_t n = read(fd, &c, 1);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die("%s: read: %s", what, err_text(errno));
        }
        if (n == 0) {
            if (len == 0)
                die("%s: the peer closed the connection before sending a line", what);
            break;
        }
        if (c == '\n')
            break;
        if (len == MAX_LINE)
            die("%s: line longer than %d bytes", what, MAX_LINE);
        line[len++] = c;
    }
    if (len > 0 && line[len - 1] == '\r')
        len--;
    line[len] = '\0';
    return len;
}

static int cmd_listen(unsigned int port)
{
    int lfd = vsock_socket(), fd;
    struct sockaddr_vm addr, peer;
    socklen_t plen = sizeof peer;
    char line[MAX_LINE + 1], what[64];
    memset(&addr, 0, sizeof addr);
    addr.svm_family = AF_VSOCK;
    addr.svm_cid = VMADDR_CID_ANY;
    addr.svm_port = port;
    if (bind(lfd, (struct sockaddr *)&addr, sizeof addr) < 0)
        die("bind port %u: %s", port, strerror(errno));
    if (listen(lfd, 1) < 0)
        die("listen on port %u: %s", port, strerror(errno));
    fprintf(stderr, "vsock-tool: listening on port %u\n", port);
    /* accept() honours SO_RCVTIMEO of the listening socket */
    fd = accept4(lfd, (struct sockaddr *)&peer, &plen, SOCK_CLOEXEC);
    if (fd < 0)
        die("accept on port %u: %s", port, err_text(errno));
    close(lfd);
    set_timeouts(fd);
    snprintf(what, sizeof what, "connection from cid %u port %u", peer.svm_cid, peer.svm_port);
    size_t len = read_line(fd, line, what);
    printf("VSOCK-GUEST-GOT %s\n", line);
    fflush(stdout);
    char reply[MAX_LINE + 16];
    int rlen = snprintf(reply, sizeof reply, "guest-echo:%.*s\n", (int)len, line);
    write_all(fd, reply, (size_t)rlen, what);
    shutdown(fd, SHUT_WR);
    close(fd);
    return 0;
}

static int cmd_connect(unsigned int cid, unsigned int port, const char *msg)
{
    char line[MAX_LINE + 1], what[64];
    size_t mlen = strlen(msg);
    if (mlen > MAX_LINE)
        usage("MESSAGE too long");
    if (strchr(msg, '\n'))
        usage("MESSAGE must not contain a newline");
    int fd = vsock_connect(cid, port);
    snprintf(what, sizeof what, "cid %u port %u", cid, port);
    char *out = malloc(mlen + 1);
    if (!out)
        die("out of memory");
    memcpy(out, msg, mlen);
    out[mlen] = '\n';
    write_all(fd, out, mlen + 1, what);
    free(out);
    read_line(fd, line, what);
    printf("VSOCK-HOST-REPLY %s\n", line);
    fflush(stdout);
    close(fd);
    return 0;
}

static uint64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

/* Sends `bytes` zero bytes on fd, closes the sending half, waits for the peer to close, and
 * prints "<label> <bytes> <microseconds>[ <first reply line>]". */
static int send_zeros(int fd, unsigned long long bytes, const char *what, const char *label)
{
    static char zeros[SEND_CHUNK];
    char reply[64];
    size_t reply_len = 0;
    unsigned long long left = bytes;
    uint64_t t0, t1;
    t0 = now_us();
    while (left > 0) {
        size_t n = left < sizeof zeros ? (size_t)left : sizeof zeros;
        ssize_t w = write(fd, zeros, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            die("%s: write after %llu of %llu bytes: %s", what, bytes - left, bytes,
                err_text(errno));
        }
        left -= (unsigned long long)w;
    }
    if (shutdown(fd, SHUT_WR) < 0)
        die("%s: shutdown: %s", what, strerror(errno));
    t1 = now_us();
    /* wait until the peer has everything and closes; keep the start of what it sends */
    for (;;) {
        char buf[4096];
        ssize_t n = read(fd, buf, sizeof buf);
        if (n > 0) {
            for (ssize_t i = 0; i < n && reply_len + 1 < sizeof reply; i++)
                if (buf[i] != '\n' && buf[i] != '\r')
                    reply[reply_len++] = buf[i];
            continue;
        }
        if (n == 0) {
            t1 = now_us();
            break;
        }
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            fprintf(stderr, "vsock-tool: %s: the peer did not close within %d s; "
                            "time measured to the last write\n", what, timeout_s);
        else if (errno != ECONNRESET)
            die("%s: read: %s", what, strerror(errno));
        break;
    }
    close(fd);
    reply[reply_len] = '\0';
    printf("%s %llu %llu%s%s\n", label, bytes, (unsigned long long)(t1 - t0),
           reply_len ? " " : "", reply);
    fflush(stdout);
    return 0;
}

static int cmd_send(unsigned int cid, unsigned int port, unsigned long long bytes)
{
    char what[64];
    int fd = vsock_connect(cid, port);
    snprintf(what, sizeof what, "cid %u port %u", cid, port);
    return send_zeros(fd, bytes, what, "VSOCK-SENT");
}

static int tcp_connect(const char *ip, unsigned int port, char *what, size_t what_len)
{
    struct sockaddr_in addr;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    snprintf(what, what_len, "%s port %u", ip, port);
    if (fd < 0)
        die("socket(AF_INET): %s", strerror(errno));
    set_timeouts(fd);
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, ip, &addr.sin_addr) != 1)
        usage("IPV4 must be a dotted IPv4 address");
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0)
        die("connect to %s: %s", what, err_text(errno));
    return fd;
}

static int cmd_tcp_send(const char *ip, unsigned int port, unsigned long long bytes)
{
    char what[64];
    int fd = tcp_connect(ip, port, what, sizeof what);
    return send_zeros(fd, bytes, what, "TCP-SENT");
}

static int cmd_tcp_recv(const char *ip, unsigned int port)
{
    static char buf[SEND_CHUNK];
    char what[64];
    int fd = tcp_connect(ip, port, what, sizeof what);
    unsigned long long got = 0;
    uint64_t t0 = now_us();
    for (;;) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n > 0) {
            got += (unsigned long long)n;
            continue;
        }
        if (n == 0)
            break;
        if (errno == EINTR)
            continue;
        die("%s: read after %llu bytes: %s", what, got, err_text(errno));
    }
    uint64_t t1 = now_us();
    close(fd);
    printf("TCP-RECEIVED %llu %llu\n", got, (unsigned long long)(t1 - t0));
    fflush(stdout);
    return 0;
}

int main(int argc, char **argv)
{
    int i = 1;
    signal(SIGPIPE, SIG_IGN);
    while (i < argc && argv[i][0] == '-' && argv[i][1]) {
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help"))
            usage(NULL);
        if (strcmp(argv[i], "-t") != 0) {
            char msg[128];
            snprintf(msg, sizeof msg, "unknown option '%s'", argv[i]);
            usage(msg);
        }
        if (i + 1 >= argc)
            usage("-t needs a number of seconds");
        timeout_s = (int)parse_num(argv[i + 1], "timeout", 86400, 0);
        if (timeout_s == 0)
            usage("the timeout must be at least 1 s");
        i += 2;
    }
    if (i >= argc)
        usage("no command");
    const char *cmd = argv[i++];
    int nargs = argc - i;
    char **a = argv + i;
    if (!strcmp(cmd, "listen")) {
        if (nargs != 1)
            usage("listen takes PORT");
        return cmd_listen((unsigned int)parse_num(a[0], "port", UINT_MAX - 1, 0));
    }
    if (!strcmp(cmd, "connect")) {
        if (nargs != 3)
            usage("connect takes CID PORT MESSAGE");
        return cmd_connect((unsigned int)parse_num(a[0], "CID", UINT_MAX - 1, 0),
                           (unsigned int)parse_num(a[1], "port", UINT_MAX - 1, 0), a[2]);
    }
    if (!strcmp(cmd, "send")) {
        if (nargs != 3)
            usage("send takes CID PORT BYTES");
        return cmd_send((unsigned int)parse_num(a[0], "CID", UINT_MAX - 1, 0),
                        (unsigned int)parse_num(a[1], "port", UINT_MAX - 1, 0),
                        parse_num(a[2], "byte count", 1ULL << 50, 1));
    }
    if (!strcmp(cmd, "tcp-send")) {
        if (nargs != 3)
            usage("tcp-send takes IPV4 PORT BYTES");
        return cmd_tcp_send(a[0], (unsigned int)parse_num(a[1], "port", 65535, 0),
                            parse_num(a[2], "byte count", 1ULL << 50, 1));
    }
    if (!strcmp(cmd, "tcp-recv")) {
        if (nargs != 2)
            usage("tcp-recv takes IPV4 PORT");
        return cmd_tcp_recv(a[0], (unsigned int)parse_num(a[1], "port", 65535, 0));
    }
    {
        char msg[128];
        snprintf(msg, sizeof msg, "unknown command '%s'", cmd);
        usage(msg);
    }
    return 2;
}
