/* cumulo's CPU kernels for the bfloat16 decode step (engine/cpu.py builds and loads them).

A decode step reads every weight once for a handful of rows: it is a matrix-vector
product bound by memory bandwidth, and the general matrix products of the BLAS libraries
read bfloat16 weights at a fraction of the bandwidth there. These kernels stream each
weight row once, in order, and do the small per-layer operations around them in one
call each. This file holds what every instruction set shares (threads, rounding, the
calls' entry points, the rotary embedding); the arithmetic is in cpu_avx512.h (the
AVX-512 BF16 dot-product instruction) or cpu_avx2.h (AVX2 with FMA: bfloat16 widened to
float32), chosen by the flags the file is compiled with.

Arithmetic is float32; each operation rounds its bfloat16 result as the PyTorch
operation it replaces does.

All tensors are contiguous bfloat16 (uint16_t here) unless said otherwise. */

#include <immintrin.h>
#include <limits.h>
#include <linux/futex.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static inline float bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    __builtin_memcpy(&f, &u, 4);
    return f;
}

static inline uint16_t f32_to_bf16(float f) { /* round to nearest even, as PyTorch */
    uint32_t u;
    __builtin_memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

static inline float round_bf16(float f) { return bf16_to_f32(f32_to_bf16(f)); }

/* -- threads ----------------------------------------------------------------------------

A decode step makes about ten short parallel calls per layer, a few hundred a step, each
a fraction of a millisecond. Helper threads wait for the next call spinning (then, after
SPIN_NS idle, asleep on a futex), so a call starts and ends in well under a microsecond.
One caller uses the helpers at a time; another caller meanwhile (a second engine) runs
its call alone on its own thread. */

typedef void (*task_fn)(const void *ctx, int64_t begin, int64_t end);

#define MAX_HELPERS 63
#define SPIN_NS 2000000L
#define CHUNKS 8 /* chunks a thread, in a call */

static struct {
    atomic_int busy;              /* a caller holds the helpers */
    _Atomic uint32_t generation;  /* one more per call */
    atomic_int pending;           /* helpers not done with this call yet */
    atomic_int sleepers;
    int helpers;                  /* started (only the holder of `busy` changes it) */
    int parts;                    /* threads taking part in this call */
    task_fn fn;
    const void *ctx;
    int64_t n, chunk;
    _Atomic int64_t next;         /* the next chunk's first item */
} pool;

/* Take chunks of the call until none is left. Chunks are handed out as threads ask (not
   split in advance), so a thread the OS pauses (the server's own threads share these
   cores) leaves its share to the others instead of holding the call up. */
static inline void run_part(int t) {
    if (t >= pool.parts) return;
    const int64_t n = pool.n, chunk = pool.chunk;
    for (;;) {
        const int64_t begin = atomic_fetch_add(&pool.next, chunk);
        if (begin >= n) return;
        pool.fn(pool.ctx, begin, begin + chunk < n ? begin + chunk : n);
    }
}

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000L + ts.tv_nsec;
}

typedef struct {
    int id;
    uint32_t seen;
} helper_start;

static void *helper_main(void *arg) {
    const helper_start start = *(helper_start *)arg;
    free(arg);
    uint32_t seen = start.seen;
    for (;;) {
        uint32_t g;
        int64_t spins = 0, since = 0;
        while ((g = atomic_load(&pool.generation)) == seen) {
            _mm_pause();
            if (++spins % 1024) continue;
            if (!since) since = now_ns();
            else if (now_ns() - since > SPIN_NS) {
                atomic_fetch_add(&pool.sleepers, 1);
                if (atomic_load(&pool.generation) == seen)
                    syscall(SYS_futex, &pool.generation, FUTEX_WAIT_PRIVATE, seen, NULL, NULL, 0);
                atomic_fetch_sub(&pool.sleepers, 1);
                since = 0;
            }
        }
        seen = g;
        run_part(start.id);
        atomic_fetch_sub(&pool.pending, 1);
    }
    return NULL;
}

/* A child forked from a process with helpers has none of them (fork copies one thread):
   it starts its own when it first needs them. */
static void forget_helpers(void) {
    pool.helpers = 0;
    atomic_store(&pool.busy, 0);
    atomic_store(&pool.sleepers, 0);
    atomic_store(&pool.pending, 0);
}

__attribute__((constructor)) static void on_load(void) { pthread_atfork(NULL, NULL, forget_helpers); }

/* fn(ctx, begin, end) over 0..n-1 in chunks, on `threads` threads (this one among them). */
static void parallel(int64_t n, int threads, task_fn fn, const void *ctx) {
    if (threads > MAX_HELPERS + 1) threads = MAX_HELPERS + 1;
    if (threads <= 1 || n <= 1 || atomic_exchange(&pool.busy, 1)) {
        fn(ctx, 0, n);
        return;
    }
    while (pool.helpers < threads - 1) {
        helper_start *start = malloc(sizeof *start);
        pthread_t thread;
        if (!start) break;
        start->id = pool.helpers + 1;
        start->seen = atomic_load(&pool.generation);
        if (pthread_create(&thread, NULL, helper_main, start) != 0) {
            free(start);
            break;
        }
        pthread_detach(thread);
        pool.helpers++;
    }
    pool.fn = fn;
    pool.ctx = ctx;
    pool.n = n;
    pool.parts = threads < pool.helpers + 1 ? threads : pool.helpers + 1;
    pool.chunk = (n + CHUNKS * pool.parts - 1) / (CHUNKS * pool.parts);
    atomic_store(&pool.next, 0);
    atomic_store(&pool.pending, pool.helpers);
    atomic_fetch_add(&pool.generation, 1);
    if (atomic_load(&pool.sleepers))
        syscall(SYS_futex, &pool.generation, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
    run_part(0);
    while (atomic_load(&pool.pending)) _mm_pause();
    atomic_store(&pool.busy, 0);
}

static inline void put(const uint16_t *bias, const uint16_t *resid, uint16_t *y, int64_t at,
                       int64_t n, float v) {
    if (bias) v += bf16_to_f32(bias[n]);
    if (resid) v = bf16_to_f32(resid[at]) + round_bf16(v);
    y[at] = f32_to_bf16(v);
}

/* y[m, n] = x[m, :] . w[n, :] (+ bias[n]), rounded to bfloat16; with `resid`, then
   y[m, n] = resid[m, n] + that, rounded again (a residual add; y may be resid).
   x [M, K], w [N, K], bias [N] or NULL, resid and y [M, N].

   One row, a few short ones, or any number with `exact` stream the weight rows one after another
   (the fastest read), each against up to four input rows at a time, in an order that
   makes a row's result the same alone or in a batch. More rows take the weights four
   rows at a time against four input rows (compute-bound there, with the next weights
   prefetched), where a row's result depends on the batch (the order of its sums). */
typedef struct {
    const uint16_t *x, *w, *bias, *resid;
    uint16_t *y;
    int64_t M, N, K;
    const float *xf; /* AVX2: the input rows widened (cpu_avx2.h) */
    int64_t kp;
} linear_args;

typedef struct {
    const uint16_t *x, *weight;
    uint16_t *y;
    int64_t K;
    float eps;
} norm_args;

/* Scaled dot-product attention of one new query per row over the cache: row b (slot
   lo + b) reads columns 0..reads[b]-1. The `heads / kv_heads` query heads of a KV head
   share it. q [B, heads * dim] (the queries at the start of each qkv row: q_stride
   elements apart), out [B, heads * dim]. Softmax and sums in float32. */
typedef struct {
    const uint16_t *q, *keys, *values;
    uint16_t *out;
    const int64_t *reads;
    int64_t q_stride, lo, heads, kv_heads, dim, cols;
    float scale;
} attention_args;

typedef struct {
    const uint16_t *gu;
    uint16_t *act;
    int64_t inter;
} silu_args;

/* The index of the largest value of each row of bfloat16 logits [M, N] (the first, on a
   tie, as torch.argmax): greedy decoding's choice without a pass in PyTorch. */
typedef struct {
    const uint16_t *logits;
    int64_t *out;
    int64_t N;
} argmax_args;

#if defined(__AVX512BF16__)
#include "cpu_avx512.h"
#else
#include "cpu_avx2.h"
#endif

void cumulo_linear(const uint16_t *x, const uint16_t *w, const uint16_t *bias,
                   const uint16_t *resid, uint16_t *y, int64_t M, int64_t N, int64_t K,
                   int exact, int threads) {
    linear_args a = {x, w, bias, resid, y, M, N, K, NULL, 0};
    linear_run(&a, exact, threads);
}

/* RMS norm as Llama's: y = weight * bf16(x * rsqrt(mean(x^2) + eps)), x [M, K]. */
void cumulo_rms_norm(const uint16_t *x, const uint16_t *weight, uint16_t *y, int64_t M,
                     int64_t K, float eps, int threads) {
    const norm_args a = {x, weight, y, K, eps};
    parallel(M, threads, norm_rows, &a);
}

/* The rotary embedding of the query and key heads of each row, in place, and the row's
   new key and value written into the cache.
   qkv [B, (heads + kv_heads + kv_heads) * dim] (queries, keys, values); cos, sin [B, dim];
   keys, values: one layer's cache [slots, kv_heads, cols, dim]; row b is slot lo + b and
   writes column write_cols[b]. Each product and the sum round to bfloat16, as
   `q * cos + rotate_half(q) * sin` does in bfloat16. */
void cumulo_rope_write(uint16_t *qkv, const uint16_t *cos, const uint16_t *sin,
                       uint16_t *keys, uint16_t *values, const int64_t *write_cols, int64_t lo,
                       int64_t B, int64_t heads, int64_t kv_heads, int64_t dim, int64_t cols) {
    const int64_t width = (heads + 2 * kv_heads) * dim, half = dim / 2;
    float buf[1024];
    for (int64_t b = 0; b < B; b++) {
        uint16_t *row = qkv + b * width;
        const uint16_t *c = cos + b * dim, *s = sin + b * dim;
        for (int64_t h = 0; h < heads + kv_heads; h++) {
            uint16_t *v = row + h * dim;
            for (int64_t i = 0; i < dim; i++) {
                const float rot = i < half ? -bf16_to_f32(v[i + half]) : bf16_to_f32(v[i - half]);
                buf[i] = round_bf16(round_bf16(bf16_to_f32(v[i]) * bf16_to_f32(c[i])) +
                                    round_bf16(rot * bf16_to_f32(s[i])));
            }
            for (int64_t i = 0; i < dim; i++) v[i] = f32_to_bf16(buf[i]);
        }
        const int64_t slot = lo + b, col = write_cols[b];
        for (int64_t h = 0; h < kv_heads; h++) {
            const int64_t at = ((slot * kv_heads + h) * cols + col) * dim;
            __builtin_memcpy(keys + at, row + (heads + h) * dim, dim * 2);
            __builtin_memcpy(values + at, row + (heads + kv_heads + h) * dim, dim * 2);
        }
    }
}

void cumulo_attention(const uint16_t *q, int64_t q_stride, const uint16_t *keys,
                      const uint16_t *values, uint16_t *out, const int64_t *reads, int64_t lo,
                      int64_t B, int64_t heads, int64_t kv_heads, int64_t dim, int64_t cols,
                      float scale, int threads) {
    const attention_args a = {q, keys, values, out, reads, q_stride, lo, heads, kv_heads, dim, cols, scale};
    parallel(B * heads, threads, attention_part, &a);
}

/* act = bf16(silu(gate)) * up, rounded: gu [M, 2 * inter] (gate, then up), act [M, inter]. */
void cumulo_silu_mul(const uint16_t *gu, uint16_t *act, int64_t M, int64_t inter, int threads) {
    const silu_args a = {gu, act, inter};
    parallel(M, threads, silu_rows, &a);
}

void cumulo_argmax(const uint16_t *logits, int64_t *out, int64_t M, int64_t N, int threads) {
    const argmax_args a = {logits, out, N};
    parallel(M, threads, argmax_rows, &a);
}
