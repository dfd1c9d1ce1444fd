/* cumulo's CPU kernels for the bfloat16 decode step (engine/cpu.py builds and loads them).

A decode step reads every weight once for a handful of rows: it is a matrix-vector
product bound by memory bandwidth, and the general matrix products of the BLAS libraries
read bfloat16 weights at a fraction of the bandwidth there. These kernels stream each
weight row once, in order, with the AVX-512 BF16 dot-product instruction, and do the
small per-layer operations around them in one call each.

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

static inline __mmask32 tail_mask(int64_t left) {
    return left >= 32 ? (__mmask32)0xffffffffu : (__mmask32)((1u << left) - 1u);
}

static inline __m512bh load_bh(const uint16_t *p) { return (__m512bh)_mm512_loadu_si512(p); }

static inline __m512bh load_bh_masked(__mmask32 m, const uint16_t *p) {
    return (__m512bh)_mm512_maskz_loadu_epi16(m, p);
}

/* 16 bfloat16 values widened to float32. */
static inline __m512 load16_f32(const uint16_t *p) {
    return _mm512_castsi512_ps(
        _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p)), 16));
}

static inline __m512 load16_f32_masked(__mmask16 m, const uint16_t *p) {
    return _mm512_castsi512_ps(
        _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p)), 16));
}

/* -- threads ----------------------------------------------------------------------------

A decode step makes about ten short parallel calls per layer, a few hundred a step, each
a fraction of a millisecond. Helper threads wait for the next call spinning (then, after
SPIN_NS idle, asleep on a futex), so a call starts and ends in well under a microsecond.
One caller uses the helpers at a time; another caller meanwhile (a second engine) runs
its call alone on its own thread. */

typedef void (*task_fn)(const void *ctx, int64_t begin, int64_t end);

#define MAX_HELPERS 63
#define SPIN_NS 2000000L

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
    pool.chunk = (n + 8 * pool.parts - 1) / (8 * pool.parts); /* about 8 chunks a thread */
    atomic_store(&pool.next, 0);
    atomic_store(&pool.pending, pool.helpers);
    atomic_fetch_add(&pool.generation, 1);
    if (atomic_load(&pool.sleepers))
        syscall(SYS_futex, &pool.generation, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
    run_part(0);
    while (atomic_load(&pool.pending)) _mm_pause();
    atomic_store(&pool.busy, 0);
}

/* e^x for 16 lanes: x = n ln 2 + r, e^r by its Taylor polynomial to degree 7 (|r| <=
   ln2 / 2: relative error below 1e-7), times 2^n. */
static inline __m512 exp16(__m512 x) {
    x = _mm512_max_ps(_mm512_min_ps(x, _mm512_set1_ps(88.0f)), _mm512_set1_ps(-104.0f));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145752f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.42860677e-6f), r);
    __m512 p = _mm512_set1_ps(1.0f / 5040.0f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

/* How far ahead (bytes) the weights being streamed are asked into the L2 cache: the
   hardware prefetchers alone leave a fifth of the bandwidth unused here. */
#define PREFETCH 2048

/* One weight row with MB input rows, the weight row streamed in order: for each input
   row, blocks of 32 along k go to four accumulators in turn (block j to accumulator
   j % 4), summed (a0 + a1) + (a2 + a3) at the end. The same order for any MB, so a
   product is bit for bit the same computed with others or alone. */
#define DOT_ROWS(MB)                                                                        \
    static inline void dot_rows_##MB(const uint16_t *w, const uint16_t *x, int64_t K,     \
                                     float *out) {                                          \
        __m512 acc[MB][4];                                                                  \
        _Pragma("GCC unroll 4") for (int j = 0; j < MB; j++)                                \
            _Pragma("GCC unroll 4") for (int a = 0; a < 4; a++) acc[j][a] = _mm512_setzero_ps(); \
        int64_t k = 0;                                                                      \
        for (; k + 128 <= K; k += 128) {                                                    \
            _Pragma("GCC unroll 4") for (int a = 0; a < 4; a++)                             \
                _mm_prefetch((const char *)(w + k + 32 * a) + PREFETCH, _MM_HINT_T1);       \
            _Pragma("GCC unroll 4") for (int a = 0; a < 4; a++) {                           \
                const __m512bh wv = load_bh(w + k + 32 * a);                                \
                _Pragma("GCC unroll 4") for (int j = 0; j < MB; j++)                        \
                    acc[j][a] = _mm512_dpbf16_ps(acc[j][a], wv, load_bh(x + j * K + k + 32 * a)); \
            }                                                                               \
        }                                                                                   \
        for (int a = 0; k < K; k += 32, a++) {                                              \
            const __mmask32 m = tail_mask(K - k);                                           \
            const __m512bh wv = load_bh_masked(m, w + k);                                   \
            _Pragma("GCC unroll 4") for (int j = 0; j < MB; j++)                            \
                acc[j][a] = _mm512_dpbf16_ps(acc[j][a], wv, load_bh_masked(m, x + j * K + k)); \
        }                                                                                   \
        _Pragma("GCC unroll 4") for (int j = 0; j < MB; j++)                                \
            out[j] = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc[j][0], acc[j][1]), \
                                                        _mm512_add_ps(acc[j][2], acc[j][3]))); \
    }
DOT_ROWS(1)
DOT_ROWS(2)
DOT_ROWS(3)
DOT_ROWS(4)

/* Four weight rows (one block) with MB input rows: one accumulator per pair, 4 * MB
   independent chains, each weight vector loaded once for the MB rows. With `next`, the
   lines of the next block's rows at the same places are prefetched meanwhile, so the
   next block's first pass finds them in the cache. */
#define DOT_TILE(MB)                                                                       \
    static inline void dot_tile_##MB(const uint16_t *w, const uint16_t *x, int64_t K,    \
                                     const uint16_t *next, float out[4][4]) {             \
        __m512 acc[4][MB];                                                                 \
        _Pragma("GCC unroll 4") for (int r = 0; r < 4; r++)                                \
            _Pragma("GCC unroll 4") for (int j = 0; j < MB; j++) acc[r][j] = _mm512_setzero_ps(); \
        for (int64_t k = 0; k < K; k += 32) {                                              \
            const __mmask32 m = tail_mask(K - k);                                          \
            if (next) {                                                                    \
                _Pragma("GCC unroll 4") for (int r = 0; r < 4; r++)                        \
                    _mm_prefetch((const char *)(next + r * K + k), _MM_HINT_T1);           \
            }                                                                              \
            __m512bh xv[MB];                                                               \
            _Pragma("GCC unroll 4") for (int j = 0; j < MB; j++)                           \
                xv[j] = load_bh_masked(m, x + j * K + k);                                  \
            _Pragma("GCC unroll 4") for (int r = 0; r < 4; r++) {                          \
                const __m512bh wv = load_bh_masked(m, w + r * K + k);                      \
                _Pragma("GCC unroll 4") for (int j = 0; j < MB; j++)                       \
                    acc[r][j] = _mm512_dpbf16_ps(acc[r][j], wv, xv[j]);                    \
            }                                                                              \
        }                                                                                  \
        _Pragma("GCC unroll 4") for (int r = 0; r < 4; r++)                                \
            _Pragma("GCC unroll 4") for (int j = 0; j < MB; j++)                           \
                out[r][j] = _mm512_reduce_add_ps(acc[r][j]);                               \
    }
DOT_TILE(1)
DOT_TILE(2)
DOT_TILE(3)

/* Lane i of the result is the sum of the lanes of v[i] (16 horizontal sums at once). */
static inline __m512 sum16(const __m512 v[16]) {
    __m512 t[8], u[4];
    for (int k = 0; k < 8; k++)
        t[k] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * k], v[2 * k + 1]),
                             _mm512_unpackhi_ps(v[2 * k], v[2 * k + 1]));
    for (int k = 0; k < 4; k++)
        u[k] = _mm512_add_ps(_mm512_shuffle_ps(t[2 * k], t[2 * k + 1], 0x44),
                             _mm512_shuffle_ps(t[2 * k], t[2 * k + 1], 0xEE));
    const __m512 s01 = _mm512_add_ps(_mm512_shuffle_f32x4(u[0], u[1], 0x88),
                                     _mm512_shuffle_f32x4(u[0], u[1], 0xDD));
    const __m512 s23 = _mm512_add_ps(_mm512_shuffle_f32x4(u[2], u[3], 0x88),
                                     _mm512_shuffle_f32x4(u[2], u[3], 0xDD));
    return _mm512_add_ps(_mm512_shuffle_f32x4(s01, s23, 0x88),
                         _mm512_shuffle_f32x4(s01, s23, 0xDD));
}

/* Four weight rows with four input rows, as DOT_TILE, ending vectorized: lane 4 j + r of
   the sums is input row j with weight row r; bias, residual and rounding on all 16 at
   once, each input row's four outputs stored together. */
static inline void tile_4x4(const uint16_t *w, const uint16_t *x, int64_t K, const uint16_t *next,
                            const uint16_t *bias, const uint16_t *resid, uint16_t *y, int64_t N) {
    __m512 acc[16];
#pragma GCC unroll 16
    for (int i = 0; i < 16; i++) acc[i] = _mm512_setzero_ps();
    for (int64_t k = 0; k < K; k += 32) {
        const __mmask32 m = tail_mask(K - k);
        if (next) {
#pragma GCC unroll 4
            for (int r = 0; r < 4; r++) _mm_prefetch((const char *)(next + r * K + k), _MM_HINT_T1);
        }
        __m512bh xv[4];
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++) xv[j] = load_bh_masked(m, x + j * K + k);
#pragma GCC unroll 4
        for (int r = 0; r < 4; r++) {
            const __m512bh wv = load_bh_masked(m, w + r * K + k);
#pragma GCC unroll 4
            for (int j = 0; j < 4; j++) acc[4 * j + r] = _mm512_dpbf16_ps(acc[4 * j + r], wv, xv[j]);
        }
    }
    __m512 done[16]; /* a copy: `acc` itself stays in registers through the loop */
#pragma GCC unroll 16
    for (int i = 0; i < 16; i++) done[i] = acc[i];
    __m512 v = sum16(done);
    if (bias) v = _mm512_add_ps(v, _mm512_broadcast_f32x4(_mm512_castps512_ps128(load16_f32_masked(0xf, bias))));
    if (resid) {
        uint64_t parts[4];
        for (int j = 0; j < 4; j++) __builtin_memcpy(&parts[j], resid + j * N, 8);
        const __m256i packed = _mm256_set_epi64x((long long)parts[3], (long long)parts[2],
                                                 (long long)parts[1], (long long)parts[0]);
        const __m512 r = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(packed), 16));
        v = _mm512_add_ps(r, _mm512_cvtpbh_ps(_mm512_cvtneps_pbh(v)));
    }
    uint16_t out[16];
    _mm256_storeu_si256((__m256i *)out, (__m256i)_mm512_cvtneps_pbh(v));
    for (int j = 0; j < 4; j++) __builtin_memcpy(y + j * N, out + 4 * j, 8);
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
} linear_args;

static void linear_rows(const void *ctx, int64_t begin, int64_t end) {
    const linear_args *a = ctx;
    const int64_t M = a->M, N = a->N, K = a->K;
    for (int64_t n = begin; n < end; n++) {
        const uint16_t *row = a->w + n * K;
        for (int64_t m0 = 0; m0 < M; m0 += 4) {
            float out[4];
            const int64_t mb = M - m0 < 4 ? M - m0 : 4;
            const uint16_t *xs = a->x + m0 * K;
            switch (mb) {
                case 1: dot_rows_1(row, xs, K, out); break;
                case 2: dot_rows_2(row, xs, K, out); break;
                case 3: dot_rows_3(row, xs, K, out); break;
                default: dot_rows_4(row, xs, K, out); break;
            }
            for (int64_t j = 0; j < mb; j++) put(a->bias, a->resid, a->y, (m0 + j) * N + n, n, out[j]);
        }
    }
}

static void linear_blocks(const void *ctx, int64_t begin, int64_t end) {
    const linear_args *a = ctx;
    const int64_t M = a->M, N = a->N, K = a->K;
    for (int64_t blk = begin; blk < end; blk++) {
        const int64_t n0 = blk * 4;
        if (n0 + 4 > N) { /* the last rows, one at a time */
            for (int64_t n = n0; n < N; n++)
                for (int64_t m = 0; m < M; m++) {
                    float v;
                    dot_rows_1(a->w + n * K, a->x + m * K, K, &v);
                    put(a->bias, a->resid, a->y, m * N + n, n, v);
                }
            continue;
        }
        const uint16_t *rows = a->w + n0 * K;
        const uint16_t *next = blk + 1 < end && n0 + 8 <= N ? rows + 4 * K : NULL;
        for (int64_t m0 = 0; m0 < M; m0 += 4) {
            float out[4][4];
            const int64_t mb = M - m0 < 4 ? M - m0 : 4;
            const uint16_t *xs = a->x + m0 * K;
            const uint16_t *ahead = m0 + 4 >= M ? next : NULL; /* during the last pass */
            switch (mb) {
                case 1: dot_tile_1(rows, xs, K, ahead, out); break;
                case 2: dot_tile_2(rows, xs, K, ahead, out); break;
                case 3: dot_tile_3(rows, xs, K, ahead, out); break;
                default:
                    tile_4x4(rows, xs, K, ahead, a->bias ? a->bias + n0 : NULL,
                             a->resid ? a->resid + m0 * N + n0 : NULL, a->y + m0 * N + n0, N);
                    continue;
            }
            for (int r = 0; r < 4; r++)
                for (int64_t j = 0; j < mb; j++)
                    put(a->bias, a->resid, a->y, (m0 + j) * N + n0 + r, n0 + r, out[r][j]);
        }
    }
}

void cumulo_linear(const uint16_t *x, const uint16_t *w, const uint16_t *bias,
                   const uint16_t *resid, uint16_t *y, int64_t M, int64_t N, int64_t K,
                   int exact, int threads) {
    const linear_args a = {x, w, bias, resid, y, M, N, K};
    /* Rows while the input rows stay in the L1 cache beside the streamed weights. */
    if (exact || M == 1 || (M <= 4 && M * K <= 8192)) parallel(N, threads, linear_rows, &a);
    else parallel((N + 3) / 4, threads, linear_blocks, &a);
}

/* RMS norm as Llama's: y = weight * bf16(x * rsqrt(mean(x^2) + eps)), x [M, K]. */
static inline __m512 round16(__m512 v) { return _mm512_cvtpbh_ps(_mm512_cvtneps_pbh(v)); }

static inline void store16(uint16_t *p, __m512 v) {
    _mm256_storeu_si256((__m256i *)p, (__m256i)_mm512_cvtneps_pbh(v));
}

typedef struct {
    const uint16_t *x, *weight;
    uint16_t *y;
    int64_t K;
    float eps;
} norm_args;

static void norm_rows(const void *ctx, int64_t begin, int64_t end) {
    const norm_args *a = ctx;
    const int64_t K = a->K;
    for (int64_t m = begin; m < end; m++) {
        const uint16_t *xr = a->x + m * K;
        uint16_t *yr = a->y + m * K;
        __m512 acc = _mm512_setzero_ps();
        int64_t k = 0;
        for (; k + 16 <= K; k += 16) {
            __m512 v = load16_f32(xr + k);
            acc = _mm512_fmadd_ps(v, v, acc);
        }
        if (k < K) {
            __m512 v = load16_f32_masked((__mmask16)((1u << (K - k)) - 1u), xr + k);
            acc = _mm512_fmadd_ps(v, v, acc);
        }
        const float scale = 1.0f / sqrtf(_mm512_reduce_add_ps(acc) / (float)K + a->eps);
        const __m512 sv = _mm512_set1_ps(scale);
        for (k = 0; k + 16 <= K; k += 16)
            store16(yr + k, _mm512_mul_ps(load16_f32(a->weight + k),
                                          round16(_mm512_mul_ps(load16_f32(xr + k), sv))));
        for (; k < K; k++)
            yr[k] = f32_to_bf16(bf16_to_f32(a->weight[k]) * round_bf16(bf16_to_f32(xr[k]) * scale));
    }
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

static void attention_part(const void *ctx, int64_t begin, int64_t end) {
    const attention_args *a = ctx;
    const int64_t heads = a->heads, kv_heads = a->kv_heads, dim = a->dim, cols = a->cols;
    const int64_t group = heads / kv_heads;
    for (int64_t item = begin; item < end; item++) {
        const int64_t b = item / heads, h = item % heads, n = a->reads[b];
        const uint16_t *qh = a->q + b * a->q_stride + h * dim;
        const int64_t base = ((a->lo + b) * kv_heads + h / group) * cols * dim;
        const uint16_t *kh = a->keys + base, *vh = a->values + base;
        const float scale = a->scale;
        float scores_stack[4096];
        float *heap = n > 4096 ? (float *)malloc(sizeof(float) * (size_t)n) : 0;
        float *scores = heap ? heap : scores_stack;
        float best = -INFINITY;
        for (int64_t t = 0; t < n; t++) {
            __m512 acc = _mm512_setzero_ps();
            for (int64_t k = 0; k < dim; k += 32) {
                const __mmask32 m = tail_mask(dim - k);
                acc = _mm512_dpbf16_ps(acc, load_bh_masked(m, qh + k),
                                       load_bh_masked(m, kh + t * dim + k));
            }
            const float sc = _mm512_reduce_add_ps(acc) * scale;
            scores[t] = sc;
            if (sc > best) best = sc;
        }
        float total = 0.0f;
        int64_t t = 0;
        for (; t + 16 <= n; t += 16) {
            __m512 e = exp16(_mm512_sub_ps(_mm512_loadu_ps(scores + t), _mm512_set1_ps(best)));
            _mm512_storeu_ps(scores + t, e);
            total += _mm512_reduce_add_ps(e);
        }
        for (; t < n; t++) {
            scores[t] = expf(scores[t] - best);
            total += scores[t];
        }
        float acc[512];
        for (int64_t i = 0; i < dim; i++) acc[i] = 0.0f;
        for (t = 0; t < n; t++) {
            const float p = scores[t];
            const uint16_t *vt = vh + t * dim;
            int64_t i = 0;
            for (; i + 16 <= dim; i += 16)
                _mm512_storeu_ps(acc + i, _mm512_fmadd_ps(_mm512_set1_ps(p), load16_f32(vt + i),
                                                          _mm512_loadu_ps(acc + i)));
            for (; i < dim; i++) acc[i] += p * bf16_to_f32(vt[i]);
        }
        uint16_t *oh = a->out + b * heads * dim + h * dim;
        for (int64_t i = 0; i < dim; i++) oh[i] = f32_to_bf16(acc[i] / total);
        free(heap);
    }
}

void cumulo_attention(const uint16_t *q, int64_t q_stride, const uint16_t *keys,
                      const uint16_t *values, uint16_t *out, const int64_t *reads, int64_t lo,
                      int64_t B, int64_t heads, int64_t kv_heads, int64_t dim, int64_t cols,
                      float scale, int threads) {
    const attention_args a = {q, keys, values, out, reads, q_stride, lo, heads, kv_heads, dim, cols, scale};
    parallel(B * heads, threads, attention_part, &a);
}

typedef struct {
    const uint16_t *gu;
    uint16_t *act;
    int64_t inter;
} silu_args;

static void silu_rows(const void *ctx, int64_t begin, int64_t end) {
    const silu_args *a = ctx;
    const int64_t inter = a->inter;
    for (int64_t m = begin; m < end; m++) {
        const uint16_t *g = a->gu + m * 2 * inter, *u = g + inter;
        uint16_t *out = a->act + m * inter;
        int64_t i = 0;
        for (; i + 16 <= inter; i += 16) {
            const __m512 x = load16_f32(g + i);
            const __m512 e = exp16(_mm512_sub_ps(_mm512_setzero_ps(), x));
            const __m512 silu = _mm512_div_ps(x, _mm512_add_ps(_mm512_set1_ps(1.0f), e));
            store16(out + i, _mm512_mul_ps(round16(silu), load16_f32(u + i)));
        }
        for (; i < inter; i++) {
            const float x = bf16_to_f32(g[i]);
            out[i] = f32_to_bf16(round_bf16(x / (1.0f + expf(-x))) * bf16_to_f32(u[i]));
        }
    }
}

/* act = bf16(silu(gate)) * up, rounded: gu [M, 2 * inter] (gate, then up), act [M, inter]. */
void cumulo_silu_mul(const uint16_t *gu, uint16_t *act, int64_t M, int64_t inter, int threads) {
    const silu_args a = {gu, act, inter};
    parallel(M, threads, silu_rows, &a);
}

/* The index of the largest value of each row of bfloat16 logits [M, N] (the first, on a
   tie, as torch.argmax): greedy decoding's choice without a pass in PyTorch. */
typedef struct {
    const uint16_t *logits;
    int64_t *out;
    int64_t N;
} argmax_args;

static void argmax_rows(const void *ctx, int64_t begin, int64_t end) {
    const argmax_args *a = ctx;
    for (int64_t m = begin; m < end; m++) {
        const uint16_t *row = a->logits + m * a->N;
        __m512 best = _mm512_set1_ps(-INFINITY);
        int64_t i = 0;
        for (; i + 16 <= a->N; i += 16) best = _mm512_max_ps(best, load16_f32(row + i));
        float top = _mm512_reduce_max_ps(best);
        for (; i < a->N; i++) top = fmaxf(top, bf16_to_f32(row[i]));
        int64_t at = 0;
        while (at < a->N && bf16_to_f32(row[at]) != top) at++;
        a->out[m] = at < a->N ? at : 0;
    }
}

void cumulo_argmax(const uint16_t *logits, int64_t *out, int64_t M, int64_t N, int threads) {
    const argmax_args a = {logits, out, N};
    parallel(M, threads, argmax_rows, &a);
}
