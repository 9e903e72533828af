/* tlsload: HTTPS-through-a-proxy load generator for the interception bench (bench/run --intercept).
 *
 *   tlsload MODE -a PROXY_HOST:PORT -o HOST:PORT -p PATH -c THREADS -d SECONDS -C CAFILE
 *
 * MODE handshake: every request is a new CONNECT, a new full TLS handshake (no session
 *                 resumption: no tickets, no session cache), one GET, then close.
 * MODE keepalive: each thread opens one tunnel + TLS session and sends GETs on it back to back.
 *
 * The client verifies the certificate it is shown against CAFILE for HOST (the interception
 * CA), offers ALPN http/1.1 only, and counts a request only when a 200 with its whole body came
 * back. Prints one JSON line: {"mode", "ok", "errors", "seconds", "rate", "p50_ms", "p99_ms"}.
 * One blocking thread per connection: simple, and the proxy (one core) is the bottleneck.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define MAX_LAT 2000000
static const char *mode, *proxy_host, *origin_host, *path = "/1k", *cafile;
static int proxy_port, origin_port, threads = 8;
static double duration = 5.0, t_end;
static SSL_CTX *ctx;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static long ok_total, err_total, n_lat;
static float *lat;
static char first_error[256];

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void note_error(const char *what) {
    pthread_mutex_lock(&mu);
    err_total++;
    if (!first_error[0]) snprintf(first_error, sizeof first_error, "%s", what);
    pthread_mutex_unlock(&mu);
}

static int split_hostport(const char *s, const char **host, int *port) {
    const char *colon = strrchr(s, ':');
    if (!colon) return -1;
    *host = strndup(s, colon - s);
    *port = atoi(colon + 1);
    return 0;
}

/* A socket with a 200 to CONNECT HOST:PORT, or -1. */
static int open_tunnel(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return -1;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct timeval tv = {5, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(proxy_port)};
    inet_pton(AF_INET, proxy_host, &sa.sin_addr);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) { close(fd); return -1; }
    char req[512];
    int n = snprintf(req, sizeof req, "CONNECT %s:%d HTTP/1.1\r\nHost: %s:%d\r\n\r\n",
                     origin_host, origin_port, origin_host, origin_port);
    if (send(fd, req, n, 0) != n) { close(fd); return -1; }
    char buf[4096];
    int got = 0;
    while (got < (int)sizeof buf - 1) {
        int r = recv(fd, buf + got, 1, 0); /* byte by byte: never read into the TLS stream */
        if (r <= 0) { close(fd); return -1; }
        got += r;
        buf[got] = 0;
        if (got >= 4 && memcmp(buf + got - 4, "\r\n\r\n", 4) == 0) break;
    }
    if (strncmp(buf, "HTTP/1.1 200", 12) != 0 && strncmp(buf, "HTTP/1.0 200", 12) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* One GET on an established TLS session; 0 when a 200 and its whole body arrived. */
static int one_request(SSL *ssl, int keepalive) {
    char req[1024];
    int n = snprintf(req, sizeof req,
                     "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUser-Agent: tlsload\r\n%s\r\n", path,
                     origin_host, origin_port, keepalive ? "" : "Connection: close\r\n");
    if (SSL_write(ssl, req, n) != n) return -1;
    static __thread char buf[65536];
    int got = 0, head_end = -1;
    while (head_end < 0) {
        if (got >= (int)sizeof buf - 1) return -1;
        int r = SSL_read(ssl, buf + got, sizeof buf - 1 - got);
        if (r <= 0) return -1;
        got += r;
        buf[got] = 0;
        char *e = strstr(buf, "\r\n\r\n");
        if (e) head_end = (int)(e - buf) + 4;
    }
    if (strncmp(buf, "HTTP/1.1 200", 12) != 0) return -1;
    long length = -1;
    int chunked = 0;
    for (char *line = strstr(buf, "\r\n"); line && line < buf + head_end; line = strstr(line + 2, "\r\n")) {
        if (strncasecmp(line + 2, "content-length:", 15) == 0) length = atol(line + 17);
        if (strncasecmp(line + 2, "transfer-encoding:", 18) == 0) chunked = 1;
    }
    if (chunked || length < 0) {
        /* read until the terminating chunk (bench origins answer with a length) */
        while (!strstr(buf + head_end, "0\r\n\r\n")) {
            if (got >= (int)sizeof buf - 1) got = head_end; /* keep the search window small */
            int r = SSL_read(ssl, buf + got, sizeof buf - 1 - got);
            if (r <= 0) return -1;
            got += r;
            buf[got] = 0;
        }
        return 0;
    }
    long body = got - head_end;
    while (body < length) {
        int r = SSL_read(ssl, buf, sizeof buf);
        if (r <= 0) return -1;
        body += r;
    }
    return body == length ? 0 : -1;
}

static SSL *tls_open(int fd) {
    SSL *ssl = SSL_new(ctx);
    SSL_set_fd(ssl, fd);
    SSL_set_tlsext_host_name(ssl, origin_host);
    SSL_set1_host(ssl, origin_host);
    if (SSL_connect(ssl) != 1) {
        char e[200];
        ERR_error_string_n(ERR_get_error(), e, sizeof e);
        note_error(e);
        SSL_free(ssl);
        return NULL;
    }
    return ssl;
}

static void record(double started) {
    float ms = (float)((now() - started) * 1000.0);
    pthread_mutex_lock(&mu);
    ok_total++;
    if (n_lat < MAX_LAT) lat[n_lat++] = ms;
    pthread_mutex_unlock(&mu);
}

static void *worker(void *arg) {
    (void)arg;
    int keepalive = strcmp(mode, "keepalive") == 0;
    while (now() < t_end) {
        double started = now();
        int fd = open_tunnel();
        if (fd < 0) { note_error("CONNECT failed"); usleep(10000); continue; }
        SSL *ssl = tls_open(fd);
        if (!ssl) { close(fd); usleep(10000); continue; }
        if (!keepalive) {
            if (one_request(ssl, 0) == 0) record(started);
            else note_error("request failed");
        } else {
            while (now() < t_end) {
                double t0 = now();
                if (one_request(ssl, 1) != 0) { note_error("keep-alive request failed"); break; }
                record(t0);
            }
        }
        SSL_shutdown(ssl);
        SSL_free(ssl);
        close(fd);
    }
    return NULL;
}

static int cmp(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: tlsload handshake|keepalive -a H:P -o H:P -p PATH -c N -d S -C CA\n"); return 2; }
    mode = argv[1];
    int opt;
    optind = 2;
    while ((opt = getopt(argc, argv, "a:o:p:c:d:C:")) != -1) {
        switch (opt) {
        case 'a': split_hostport(optarg, &proxy_host, &proxy_port); break;
        case 'o': split_hostport(optarg, &origin_host, &origin_port); break;
        case 'p': path = optarg; break;
        case 'c': threads = atoi(optarg); break;
        case 'd': duration = atof(optarg); break;
        case 'C': cafile = optarg; break;
        default: return 2;
        }
    }
    if (!proxy_host || !origin_host || !cafile) { fprintf(stderr, "tlsload: -a, -o and -C are required\n"); return 2; }
    ctx = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    if (SSL_CTX_load_verify_locations(ctx, cafile, NULL) != 1) { fprintf(stderr, "tlsload: cannot load %s\n", cafile); return 2; }
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
    static const unsigned char alpn[] = "\x08http/1.1";
    SSL_CTX_set_alpn_protos(ctx, alpn, sizeof alpn - 1);
    lat = malloc(sizeof(float) * MAX_LAT);
    pthread_t tid[1024];
    if (threads > 1024) threads = 1024;
    double t0 = now();
    t_end = t0 + duration;
    for (int i = 0; i < threads; i++) pthread_create(&tid[i], NULL, worker, NULL);
    for (int i = 0; i < threads; i++) pthread_join(tid[i], NULL);
    double secs = now() - t0;
    qsort(lat, n_lat, sizeof(float), cmp);
    double p50 = n_lat ? lat[n_lat / 2] : 0, p99 = n_lat ? lat[(long)(n_lat * 0.99)] : 0;
    printf("{\"mode\":\"%s\",\"ok\":%ld,\"errors\":%ld,\"seconds\":%.3f,\"rate\":%.1f,"
           "\"p50_ms\":%.3f,\"p99_ms\":%.3f,\"first_error\":\"%s\"}\n",
           mode, ok_total, err_total, secs, ok_total / secs, p50, p99, first_error);
    return 0;
}
