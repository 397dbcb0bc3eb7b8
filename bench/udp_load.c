/*
 * udp_load.c - BEP 15 UDP tracker load generator (announce / scrape).
 *
 * Build:  gcc -O2 -Wall -o udp_load udp_load.c   (python -m bench compiles it on first use)
 * Adapted from the team's bench kit; the model matches bench/announce.lua.
 *
 * Model: N simulated clients, each with a fixed peer_id, port and key, and its
 * own connection id (obtained with a connect, action 0, magic 0x41727101980).
 * Client c's peer_id is "-BM0001-" + 12 pseudo-random bytes derived from c and
 * its port is 1025 + c % 60000 -- the same derivation as announce.lua, so the
 * HTTP and UDP loads announce the same peer population. Client c is a member
 * of G torrents: pool[(c*G + j) % K], j < G (G = 0: any torrent), so the
 * tracker state converges to N*G peers (N*G/K per torrent). Each request
 * picks a random idle client and one of its torrents (-q: clients and
 * torrents in sequence, which with -x N*G announces every (client, torrent)
 * pair exactly once: the pre-fill). left = 0 for 20% of (client, torrent)
 * pairs, fixed per pair. A client reuses its connection id until it is
 * older than -c seconds or an error reply (action 3) arrives, then it
 * reconnects. W requests are kept in flight. Transaction ids encode the
 * in-flight slot plus a generation counter and every reply is checked
 * against the slot it claims (unknown/stale ids are counted as bad_tid).
 *
 * Only loopback destinations (127.0.0.0/8) are accepted unless -A is given.
 *
 * Output: a human-readable summary plus one machine-readable line
 *   UDP_RESULT key=value ...
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAGIC 0x41727101980ULL
#define ACT_CONNECT 0
#define ACT_ANNOUNCE 1
#define ACT_SCRAPE 2
#define ACT_ERROR 3
#define MAX_SOCKS 64
#define LAT_BUCKET_US 10
#define LAT_NBUCKETS 100000 /* 10us * 100000 = 1 s, then overflow */
#define MAX_SCRAPE 74
#define SIZE_MAX_TRACK 2048

typedef struct {
  uint8_t peer_id[20];
  uint16_t port;
  uint32_t key;
  uint64_t conn_id;
  double conn_time; /* <0: no valid connection id */
  int busy;
  int sock;
  uint32_t nann; /* announces sent (sequential mode walks the client's torrents) */
  uint64_t downloaded, uploaded;
} client_t;

typedef struct {
  int in_use;
  uint32_t tid;
  int client;
  int action;
  int nhash;
  double t_sent;
} slot_t;

static uint64_t rng_s[2];
static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
static uint64_t rnd(void) { /* xoroshiro128+ */
  uint64_t s0 = rng_s[0], s1 = rng_s[1], r = s0 + s1;
  s1 ^= s0;
  rng_s[0] = rotl(s0, 55) ^ s1 ^ (s1 << 14);
  rng_s[1] = rotl(s1, 36);
  return r;
}
static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}
static void put32(uint8_t *p, uint32_t v) { v = htonl(v); memcpy(p, &v, 4); }
static void put64(uint8_t *p, uint64_t v) { put32(p, (uint32_t)(v >> 32)); put32(p + 4, (uint32_t)v); }
static void put16(uint8_t *p, uint16_t v) { v = htons(v); memcpy(p, &v, 2); }
static uint32_t get32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return ntohl(v); }
static uint64_t get64(const uint8_t *p) { return ((uint64_t)get32(p) << 32) | get32(p + 4); }

typedef struct {
  uint64_t n;
  uint64_t b[LAT_NBUCKETS + 1];
  double sum, max;
} hist_t;
static void hist_add(hist_t *h, double us) {
  size_t i = (size_t)(us / LAT_BUCKET_US);
  if (i > LAT_NBUCKETS) i = LAT_NBUCKETS;
  h->b[i]++; h->n++; h->sum += us;
  if (us > h->max) h->max = us;
}
static double hist_pct(const hist_t *h, double p) {
  if (!h->n) return 0;
  uint64_t want = (uint64_t)(p / 100.0 * h->n + 0.5), acc = 0;
  if (want < 1) want = 1;
  for (size_t i = 0; i <= LAT_NBUCKETS; i++) {
    acc += h->b[i];
    if (acc >= want) return (i + 0.5) * LAT_BUCKET_US;
  }
  return h->max;
}

static void usage(const char *a) {
  fprintf(stderr,
    "usage: %s [options]\n"
    "  -H ip        tracker address (default 127.0.0.1; loopback only unless -A)\n"
    "  -p port      tracker UDP port (default 6969)\n"
    "  -n N         simulated clients (default 5000)\n"
    "  -k K         info_hash pool size, random hashes (default 1000)\n"
    "  -f file      info_hash pool file (40 hex chars per line); overrides -k\n"
    "  -w W         requests kept in flight (default 64)\n"
    "  -t T         run time in seconds (default 10)\n"
    "  -m mode      announce | scrape (default announce)\n"
    "  -s S         info_hashes per scrape request (default 1, max %d)\n"
    "  -N numwant   numwant in announces (default 50)\n"
    "  -P socks     number of local UDP sockets clients are spread over (default 8)\n"
    "  -c secs      reuse a connection id for this long (default 60)\n"
    "  -T ms        request timeout (default 1000)\n"
    "  -r seed      RNG seed (default: time-based)\n"
    "  -g G         torrents per client (default 20; 0 = uniform over the pool)\n"
    "  -q           sequential clients/torrents (use with -x N*G to pre-fill)\n"
    "  -x count     stop early after this many announce/scrape responses (pre-fill)\n"
    "  -i           print per-second progress\n"
    "  -R rate      send at most this many announces/scrapes per second (open-loop pacing,\n"
    "               connects not counted; 0 = as fast as the in-flight window allows)\n"
    "  -A           allow a non-loopback destination\n"
    "  -K           each client's key made from its number, as its peer_id is, so every run\n"
    "               sends the keys a pre-fill stored (a real client keeps its key; without -K\n"
    "               a run's keys are new, and no announce is a pure refresh)\n", a, MAX_SCRAPE);
  exit(2);
}

int main(int argc, char **argv) {
  const char *host = "127.0.0.1", *poolfile = NULL, *mode = "announce";
  int port = 6969, N = 5000, K = 1000, G = 20, seq_mode = 0, W = 64, nsock = 8, spp = 1, numwant = 50, progress = 0, allow_any = 0, stable_keys = 0;
  double T = 10, conn_age = 60, timeout_ms = 1000, rate = 0;
  uint64_t seed = 0, maxresp = 0;
  int o;
  while ((o = getopt(argc, argv, "H:p:n:k:f:w:t:m:s:N:P:c:T:r:x:g:R:qiAK")) != -1) {
    switch (o) {
      case 'H': host = optarg; break;
      case 'p': port = atoi(optarg); break;
      case 'n': N = atoi(optarg); break;
      case 'k': K = atoi(optarg); break;
      case 'f': poolfile = optarg; break;
      case 'w': W = atoi(optarg); break;
      case 't': T = atof(optarg); break;
      case 'm': mode = optarg; break;
      case 's': spp = atoi(optarg); break;
      case 'N': numwant = atoi(optarg); break;
      case 'P': nsock = atoi(optarg); break;
      case 'c': conn_age = atof(optarg); break;
      case 'T': timeout_ms = atof(optarg); break;
      case 'r': seed = strtoull(optarg, 0, 0); break;
      case 'g': G = atoi(optarg); break;
      case 'q': seq_mode = 1; break;
      case 'x': maxresp = strtoull(optarg, 0, 0); break;
      case 'i': progress = 1; break;
      case 'A': allow_any = 1; break;
      case 'K': stable_keys = 1; break;
      case 'R': rate = atof(optarg); break;
      default: usage(argv[0]);
    }
  }
  int scrape = !strcmp(mode, "scrape");
  if (!scrape && strcmp(mode, "announce")) usage(argv[0]);
  if (W < 1 || W > 65536 || N < 1 || nsock < 1 || nsock > MAX_SOCKS || spp < 1 || spp > MAX_SCRAPE) usage(argv[0]);
  if (N < 2 * W) { fprintf(stderr, "need N >= 2*W (idle clients to pick from)\n"); return 2; }

  struct sockaddr_in dst = {0};
  dst.sin_family = AF_INET;
  dst.sin_port = htons(port);
  if (inet_pton(AF_INET, host, &dst.sin_addr) != 1) { fprintf(stderr, "bad address %s\n", host); return 2; }
  if (!allow_any && (ntohl(dst.sin_addr.s_addr) >> 24) != 127) {
    fprintf(stderr, "refusing non-loopback destination %s (use -A to override)\n", host); return 2;
  }

  if (!seed) seed = (uint64_t)(now_s() * 1e9) ^ ((uint64_t)getpid() << 32);
  rng_s[0] = seed ^ 0x9E3779B97F4A7C15ULL; rng_s[1] = seed * 0xBF58476D1CE4E5B9ULL + 1;
  for (int i = 0; i < 20; i++) rnd();

  /* info hash pool */
  uint8_t (*pool)[20];
  if (poolfile) {
    FILE *f = fopen(poolfile, "r");
    if (!f) { perror(poolfile); return 2; }
    int cap = 1024; K = 0; pool = malloc(cap * 20);
    char line[256];
    while (fgets(line, sizeof line, f)) {
      if (strlen(line) < 40) continue;
      if (K == cap) { cap *= 2; pool = realloc(pool, cap * 20); }
      for (int j = 0; j < 20; j++) { unsigned v; sscanf(line + 2 * j, "%2x", &v); pool[K][j] = v; }
      K++;
    }
    fclose(f);
    if (!K) { fprintf(stderr, "empty pool file\n"); return 2; }
  } else {
    pool = malloc((size_t)K * 20);
    for (int i = 0; i < K; i++) for (int j = 0; j < 20; j++) pool[i][j] = (uint8_t)rnd();
  }

  int socks[MAX_SOCKS];
  struct pollfd pfd[MAX_SOCKS];
  for (int s = 0; s < nsock; s++) {
    socks[s] = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
    if (socks[s] < 0) { perror("socket"); return 1; }
    int sz = 4 << 20;
    setsockopt(socks[s], SOL_SOCKET, SO_RCVBUF, &sz, sizeof sz);
    setsockopt(socks[s], SOL_SOCKET, SO_SNDBUF, &sz, sizeof sz);
    if (connect(socks[s], (struct sockaddr *)&dst, sizeof dst) < 0) { perror("connect"); return 1; }
    pfd[s].fd = socks[s]; pfd[s].events = POLLIN;
  }

  client_t *cl = calloc(N, sizeof *cl);
  for (int i = 0; i < N; i++) {
    /* must match announce.lua */
    memcpy(cl[i].peer_id, "-BM0001-", 8);
    uint32_t x = (uint32_t)((uint64_t)(i + 1) * 2654435761u);
    for (int j = 8; j < 20; j++) { x = x * 69069u + 1u; cl[i].peer_id[j] = (uint8_t)(x >> 24); }
    cl[i].port = (uint16_t)(1025 + i % 60000);
    cl[i].key = stable_keys ? x * 2246822519u + 1u : (uint32_t)rnd();
    cl[i].conn_time = -1;
    cl[i].sock = i % nsock;
  }
  slot_t *sl = calloc(W, sizeof *sl);
  int *freelist = malloc(W * sizeof(int)), nfree = W;
  for (int i = 0; i < W; i++) freelist[i] = W - 1 - i;
  uint16_t gen = (uint16_t)rnd();

  hist_t *lat = calloc(1, sizeof *lat), *clat = calloc(1, sizeof *clat);
  uint64_t *sizes = calloc(SIZE_MAX_TRACK + 1, sizeof(uint64_t));
  uint64_t sent = 0, sent_conn = 0, resp = 0, resp_conn = 0, errors = 0, timeouts = 0, bad_tid = 0,
           malformed = 0, send_eagain = 0, peers_total = 0, seeders_total = 0, leechers_total = 0,
           bytes_rx = 0, last_resp = 0, interval_seen = 0;
  char errmsg[4][128]; uint64_t errcnt[4] = {0}; int nerrmsg = 0;

  uint8_t pkt[16 + 20 * MAX_SCRAPE], buf[4096];
  double t0 = now_s(), tend = t0 + T, tlast_scan = t0, tprog = t0 + 1;
  int probe = 0;
  uint64_t seq = 0;

  while (1) {
    double now = now_s();
    if (now >= tend || (maxresp && resp >= maxresp)) break;
    /* fill the window (and, when paced, only up to rate * elapsed requests) */
    while (nfree > 0 && (rate <= 0 || (double)sent < (now - t0) * rate)) {
      int c = seq_mode ? (int)(seq++ % N) : (int)(rnd() % N), tries = 0;
      while (cl[c].busy && tries < N) { c = (c + 1) % N; tries++; }
      if (cl[c].busy) break;
      int si = freelist[nfree - 1];
      slot_t *s = &sl[si];
      uint32_t tid = ((uint32_t)(++gen) << 16) | (uint32_t)si;
      size_t len;
      int act;
      if (cl[c].conn_time < 0 || now - cl[c].conn_time > conn_age) {
        put64(pkt, MAGIC); put32(pkt + 8, ACT_CONNECT); put32(pkt + 12, tid);
        len = 16; act = ACT_CONNECT;
      } else if (!scrape) {
        int t;
        if (seq_mode) t = G > 0 ? (int)(((uint64_t)c * G + cl[c].nann % G) % K) : (int)((c + (uint64_t)cl[c].nann * N) % K);
        else t = G > 0 ? (int)(((uint64_t)c * G + rnd() % G) % K) : (int)(rnd() % K);
        cl[c].nann++;
        uint64_t left = ((((uint64_t)c * 7u) + ((uint64_t)t * 13u)) % 100u < 20u) ? 0 : 1 + rnd() % (1ULL << 30);
        put64(pkt, cl[c].conn_id); put32(pkt + 8, ACT_ANNOUNCE); put32(pkt + 12, tid);
        memcpy(pkt + 16, pool[t], 20);
        memcpy(pkt + 36, cl[c].peer_id, 20);
        put64(pkt + 56, cl[c].downloaded);
        put64(pkt + 64, left);
        put64(pkt + 72, cl[c].uploaded);
        put32(pkt + 80, 0);            /* event none (regular re-announce) */
        put32(pkt + 84, 0);            /* ip: default (source) */
        put32(pkt + 88, cl[c].key);
        put32(pkt + 92, (uint32_t)numwant);
        put16(pkt + 96, cl[c].port);
        len = 98; act = ACT_ANNOUNCE;
        cl[c].downloaded += 16384; cl[c].uploaded += 8192;
      } else {
        put64(pkt, cl[c].conn_id); put32(pkt + 8, ACT_SCRAPE); put32(pkt + 12, tid);
        /* distinct hashes per request (bittorrent-tracker de-duplicates, opentracker does not) */
        int pick[MAX_SCRAPE];
        for (int j = 0; j < spp; j++) {
          int h, dup;
          do { h = (int)(rnd() % K); dup = 0; for (int q = 0; q < j; q++) if (pick[q] == h) dup = 1; } while (dup && K >= spp);
          pick[j] = h;
          memcpy(pkt + 16 + 20 * j, pool[h], 20);
        }
        len = 16 + 20 * (size_t)spp; act = ACT_SCRAPE;
      }
      ssize_t r = send(socks[cl[c].sock], pkt, len, 0);
      if (r < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS) { send_eagain++; break; }
        if (errno == ECONNREFUSED) { continue; } /* ICMP port unreachable from an earlier packet */
        perror("send"); return 1;
      }
      nfree--;
      s->in_use = 1; s->tid = tid; s->client = c; s->action = act; s->nhash = scrape ? spp : 0; s->t_sent = now;
      cl[c].busy = 1;
      if (act == ACT_CONNECT) sent_conn++; else sent++;
    }

    int pr = poll(pfd, nsock, 1);
    (void)pr;
    now = now_s();
    for (int k = 0; k < nsock; k++) {
      int sidx = (probe + k) % nsock;
      for (int burst = 0; burst < 64; burst++) {
        ssize_t r = recv(socks[sidx], buf, sizeof buf, 0);
        if (r < 0) break;
        bytes_rx += r;
        if (r < 8) { malformed++; continue; }
        uint32_t action = get32(buf), tid = get32(buf + 4);
        uint32_t si = tid & 0xffff;
        if (si >= (uint32_t)W || !sl[si].in_use || sl[si].tid != tid || cl[sl[si].client].sock != sidx) { bad_tid++; continue; }
        slot_t *s = &sl[si];
        client_t *c = &cl[s->client];
        double us = (now - s->t_sent) * 1e6;
        if (action == ACT_ERROR) {
          errors++;
          int ml = (int)r - 8; if (ml > 120) ml = 120;
          char m[128]; memcpy(m, buf + 8, ml); m[ml] = 0;
          int found = 0;
          for (int e = 0; e < nerrmsg; e++) if (!strcmp(errmsg[e], m)) { errcnt[e]++; found = 1; }
          if (!found && nerrmsg < 4) { strcpy(errmsg[nerrmsg], m); errcnt[nerrmsg++] = 1; }
          c->conn_time = -1; /* reconnect on next use */
        } else if (action != (uint32_t)s->action) {
          malformed++;
        } else if (action == ACT_CONNECT) {
          if (r < 16) malformed++;
          else { c->conn_id = get64(buf + 8); c->conn_time = now; resp_conn++; hist_add(clat, us); }
        } else if (action == ACT_ANNOUNCE) {
          if (r < 20 || (r - 20) % 6) malformed++;
          else {
            resp++; hist_add(lat, us);
            sizes[r > SIZE_MAX_TRACK ? SIZE_MAX_TRACK : r]++;
            peers_total += (r - 20) / 6;
            interval_seen = get32(buf + 8);
            leechers_total += get32(buf + 12); seeders_total += get32(buf + 16);
          }
        } else if (action == ACT_SCRAPE) {
          if (r != 8 + 12 * s->nhash) malformed++;
          else {
            resp++; hist_add(lat, us);
            sizes[r > SIZE_MAX_TRACK ? SIZE_MAX_TRACK : r]++;
            for (int j = 0; j < s->nhash; j++) { seeders_total += get32(buf + 8 + 12 * j); leechers_total += get32(buf + 16 + 12 * j); }
          }
        }
        s->in_use = 0; c->busy = 0; freelist[nfree++] = (int)si;
      }
    }
    probe++;
    /* timeouts */
    if (now - tlast_scan > 0.005) {
      tlast_scan = now;
      for (int i = 0; i < W; i++) {
        if (sl[i].in_use && (now - sl[i].t_sent) * 1000 > timeout_ms) {
          timeouts++;
          cl[sl[i].client].busy = 0;
          if (sl[i].action == ACT_CONNECT) cl[sl[i].client].conn_time = -1;
          sl[i].in_use = 0; freelist[nfree++] = i;
        }
      }
    }
    if (progress && now >= tprog) {
      fprintf(stderr, "[%5.1fs] responses/s=%llu timeouts=%llu errors=%llu\n", now - t0,
              (unsigned long long)(resp - last_resp), (unsigned long long)timeouts, (unsigned long long)errors);
      last_resp = resp; tprog += 1;
    }
  }
  double el = now_s() - t0;

  printf("udp_load: %s mode=%s clients=%d pool=%d torrents_per_client=%d%s inflight=%d socks=%d numwant=%d elapsed=%.2fs\n",
         host, mode, N, K, G, seq_mode ? " sequential" : "", W, nsock, numwant, el);
  printf("  requests sent      : %llu (+%llu connects)\n", (unsigned long long)sent, (unsigned long long)sent_conn);
  printf("  responses          : %llu  => %.0f responses/s\n", (unsigned long long)resp, resp / el);
  printf("  connect responses  : %llu\n", (unsigned long long)resp_conn);
  printf("  errors (action 3)  : %llu\n", (unsigned long long)errors);
  for (int e = 0; e < nerrmsg; e++) printf("      %llu x \"%s\"\n", (unsigned long long)errcnt[e], errmsg[e]);
  printf("  timeouts           : %llu   bad_tid: %llu   malformed: %llu   send_eagain: %llu\n",
         (unsigned long long)timeouts, (unsigned long long)bad_tid, (unsigned long long)malformed, (unsigned long long)send_eagain);
  printf("  latency (us)       : p50=%.0f p90=%.0f p99=%.0f p99.9=%.0f max=%.0f avg=%.0f\n",
         hist_pct(lat, 50), hist_pct(lat, 90), hist_pct(lat, 99), hist_pct(lat, 99.9), lat->max, lat->n ? lat->sum / lat->n : 0);
  printf("  connect lat (us)   : p50=%.0f p99=%.0f\n", hist_pct(clat, 50), hist_pct(clat, 99));
  if (!scrape)
    printf("  avg peers/response : %.1f   avg seeders=%.1f leechers=%.1f   interval=%llu\n",
           resp ? (double)peers_total / resp : 0, resp ? (double)seeders_total / resp : 0,
           resp ? (double)leechers_total / resp : 0, (unsigned long long)interval_seen);
  printf("  response size distribution (bytes: count%s):\n", scrape ? "" : ", peers=(size-20)/6");
  {
    int shown = 0; uint64_t other = 0;
    /* print the most frequent sizes (up to 12), lump the rest */
    uint64_t *tmp = malloc((SIZE_MAX_TRACK + 1) * sizeof(uint64_t));
    memcpy(tmp, sizes, (SIZE_MAX_TRACK + 1) * sizeof(uint64_t));
    for (shown = 0; shown < 12; shown++) {
      int best = -1;
      for (int i = 0; i <= SIZE_MAX_TRACK; i++) if (tmp[i] && (best < 0 || tmp[i] > tmp[best])) best = i;
      if (best < 0) break;
      if (scrape) printf("      %5d: %llu\n", best, (unsigned long long)tmp[best]);
      else printf("      %5d: %llu (peers=%d)\n", best, (unsigned long long)tmp[best], (best - 20) / 6);
      tmp[best] = 0;
    }
    for (int i = 0; i <= SIZE_MAX_TRACK; i++) other += tmp[i];
    if (other) printf("      other: %llu\n", (unsigned long long)other);
    free(tmp);
  }
  printf("UDP_RESULT mode=%s rps=%.0f responses=%llu secs=%.2f connects=%llu errors=%llu timeouts=%llu bad_tid=%llu malformed=%llu p50_us=%.0f p90_us=%.0f p99_us=%.0f max_us=%.0f avg_peers=%.1f avg_bytes=%.1f\n",
         mode, resp / el, (unsigned long long)resp, el, (unsigned long long)resp_conn, (unsigned long long)errors,
         (unsigned long long)timeouts, (unsigned long long)bad_tid, (unsigned long long)malformed,
         hist_pct(lat, 50), hist_pct(lat, 90), hist_pct(lat, 99), lat->max,
         resp && !scrape ? (double)peers_total / resp : 0, (resp + resp_conn) ? (double)bytes_rx / (resp + resp_conn + errors) : 0);
  return (resp > 0) ? 0 : 1;
}
