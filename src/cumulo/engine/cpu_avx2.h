/* The kernels on AVX2 with FMA (x86-64-v3: AMD Zen 1-3, Intel Haswell and later), for
   cpu_kernels.c. These CPUs have no bfloat16 arithmetic: a bfloat16 value is the upper
   half of a float32, so interleaving 16-bit zeros below it (one unpack) widens eight
   values at once, and products are float32 fused multiply-adds.

   `unpacklo(0, v)` of 16 values gives elements 0-3 and 8-11 (in each 128-bit lane),
   `unpackhi` 4-7 and 12-15. The input rows of a product are widened once per call into
   that same order ("unpacked order"), so each weight vector meets its own elements. */

static inline __m256 widen_lo(__m256i v) {
    return _mm256_castsi256_ps(_mm256_unpacklo_epi16(_mm256_setzero_si256(), v));
}

static inline __m256 widen_hi(__m256i v) {
    return _mm256_castsi256_ps(_mm256_unpackhi_epi16(_mm256_setzero_si256(), v));
}

/* 8 bfloat16 values widened to float32, in order. */
static inline __m256 load8_f32(const uint16_t *p) {
    return _mm256_castsi256_ps(
        _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p)), 16));
}

/* float32 to bfloat16 bits (in the low half of each 32-bit lane), rounded to nearest
   even as PyTorch; NaN stays NaN. */
static inline __m256i to_bf16_bits(__m256 v) {
    const __m256i u = _mm256_castps_si256(v);
    const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    const __m256i rounded =
        _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(odd, _mm256_set1_epi32(0x7fff))), 16);
    const __m256i nan = _mm256_or_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(0x40));
    return _mm256_blendv_epi8(rounded, nan, _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q)));
}

static inline __m256 round8(__m256 v) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(to_bf16_bits(v), 16));
}

static inline void store8(uint16_t *p, __m256 v) {
    const __m256i packed = _mm256_packus_epi32(to_bf16_bits(v), _mm256_setzero_si256());
    _mm_storeu_si128((__m128i *)p,
                     _mm256_castsi256_si128(_mm256_permute4x64_epi64(packed, 0x08)));
}

static inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline float hmax8(__m256 v) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* e^x for 8 lanes, as exp16 of the AVX-512 kernels; 2^n is built in the exponent bits,
   so x is kept within [-87, 88] (e^-87 is below float32's relative precision of 1). */
static inline __m256 exp8(__m256 x) {
    x = _mm256_max_ps(_mm256_min_ps(x, _mm256_set1_ps(88.0f)), _mm256_set1_ps(-87.0f));
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693145752f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.42860677e-6f), r);
    __m256 p = _mm256_set1_ps(1.0f / 5040.0f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 720.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    const __m256i scale = _mm256_slli_epi32(
        _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(scale));
}

/* -- products ---------------------------------------------------------------------------

   The input rows [M, K] are widened once per call into `xf` [M, kp] (kp: K rounded up to
   32, zeros after K), in unpacked order. A weight row is then streamed 32 values (one
   64-byte line) at a time: two loads, four unpacks, and per input row four multiply-adds
   into four accumulators, summed (a0 + a1) + (a2 + a3) at the end. The same order for
   one input row or two, so a product is bit for bit the same computed with others or
   alone. The values past a row's last full 32 go through a zero-padded copy. */

#define XF_ALIGN 64

/* How far ahead (bytes) each streamed weight row is asked into the cache (1 KiB: 1.15x
   over 2 KiB here). */
#define AHEAD 1024

static void widen_rows(const uint16_t *x, float *xf, int64_t M, int64_t K, int64_t kp) {
    for (int64_t m = 0; m < M; m++) {
        const uint16_t *row = x + m * K;
        float *out = xf + m * kp;
        for (int64_t k = 0; k < kp; k += 16) {
            __m256i v;
            if (k + 16 <= K) {
                v = _mm256_loadu_si256((const __m256i *)(row + k));
            } else {
                uint16_t pad[16] = {0};
                for (int64_t i = k; i < K; i++) pad[i - k] = row[i];
                v = _mm256_loadu_si256((const __m256i *)pad);
            }
            _mm256_store_ps(out + k, widen_lo(v));
            _mm256_store_ps(out + k + 8, widen_hi(v));
        }
    }
}

#define DOT_STEP(W, J)                                                                   \
    do {                                                                                 \
        const __m256i w0 = _mm256_loadu_si256((const __m256i *)(W));                     \
        const __m256i w1 = _mm256_loadu_si256((const __m256i *)((W) + 16));              \
        const __m256 l0 = widen_lo(w0), h0 = widen_hi(w0);                               \
        const __m256 l1 = widen_lo(w1), h1 = widen_hi(w1);                               \
        _Pragma("GCC unroll 2") for (int j = 0; j < (J); j++) {                          \
            const float *xj = xf + j * kp + k;                                           \
            acc[j][0] = _mm256_fmadd_ps(l0, _mm256_load_ps(xj), acc[j][0]);              \
            acc[j][1] = _mm256_fmadd_ps(h0, _mm256_load_ps(xj + 8), acc[j][1]);          \
            acc[j][2] = _mm256_fmadd_ps(l1, _mm256_load_ps(xj + 16), acc[j][2]);         \
            acc[j][3] = _mm256_fmadd_ps(h1, _mm256_load_ps(xj + 24), acc[j][3]);         \
        }                                                                                \
    } while (0)

/* One weight row `w` [K] with MB widened input rows. */
#define DOT_ROWS(MB)                                                                     \
    static inline void dot_rows_##MB(const uint16_t *w, const float *xf, int64_t K,      \
                                     int64_t kp, float *out) {                           \
        __m256 acc[MB][4];                                                               \
        _Pragma("GCC unroll 2") for (int j = 0; j < MB; j++)                             \
            _Pragma("GCC unroll 4") for (int a = 0; a < 4; a++) acc[j][a] = _mm256_setzero_ps(); \
        int64_t k = 0;                                                                   \
        for (; k + 32 <= K; k += 32) {                                                   \
            _mm_prefetch((const char *)(w + k) + AHEAD, _MM_HINT_T0);                    \
            DOT_STEP(w + k, MB);                                                         \
        }                                                                                \
        if (k < K) {                                                                     \
            uint16_t pad[32] = {0};                                                      \
            for (int64_t i = k; i < K; i++) pad[i - k] = w[i];                           \
            DOT_STEP(pad, MB);                                                           \
        }                                                                                \
        _Pragma("GCC unroll 2") for (int j = 0; j < MB; j++)                             \
            out[j] = hsum8(_mm256_add_ps(_mm256_add_ps(acc[j][0], acc[j][1]),            \
                                         _mm256_add_ps(acc[j][2], acc[j][3])));          \
    }
DOT_ROWS(1)
DOT_ROWS(2)

/* Two weight rows `w` and `v` from two places with one widened input row, each row's
   sums in the order it has alone (dot_rows_1): two streams from memory at once, and each
   input vector loaded once for both, read a third faster than one stream here. */
#define TWO_STEP(W, V)                                                                   \
    do {                                                                                 \
        const __m256i w0 = _mm256_loadu_si256((const __m256i *)(W));                     \
        const __m256i w1 = _mm256_loadu_si256((const __m256i *)((W) + 16));              \
        const __m256i v0 = _mm256_loadu_si256((const __m256i *)(V));                     \
        const __m256i v1 = _mm256_loadu_si256((const __m256i *)((V) + 16));              \
        const __m256 x0 = _mm256_load_ps(xf + k), x1 = _mm256_load_ps(xf + k + 8);       \
        const __m256 x2 = _mm256_load_ps(xf + k + 16), x3 = _mm256_load_ps(xf + k + 24); \
        a[0] = _mm256_fmadd_ps(widen_lo(w0), x0, a[0]);                                  \
        a[1] = _mm256_fmadd_ps(widen_hi(w0), x1, a[1]);                                  \
        a[2] = _mm256_fmadd_ps(widen_lo(w1), x2, a[2]);                                  \
        a[3] = _mm256_fmadd_ps(widen_hi(w1), x3, a[3]);                                  \
        b[0] = _mm256_fmadd_ps(widen_lo(v0), x0, b[0]);                                  \
        b[1] = _mm256_fmadd_ps(widen_hi(v0), x1, b[1]);                                  \
        b[2] = _mm256_fmadd_ps(widen_lo(v1), x2, b[2]);                                  \
        b[3] = _mm256_fmadd_ps(widen_hi(v1), x3, b[3]);                                  \
    } while (0)

static inline void dot_two(const uint16_t *w, const uint16_t *v, const float *xf, int64_t K,
                           float out[2]) {
    __m256 a[4], b[4];
    for (int i = 0; i < 4; i++) a[i] = b[i] = _mm256_setzero_ps();
    int64_t k = 0;
    for (; k + 32 <= K; k += 32) {
        _mm_prefetch((const char *)(w + k) + AHEAD, _MM_HINT_T0);
        _mm_prefetch((const char *)(v + k) + AHEAD, _MM_HINT_T0);
        TWO_STEP(w + k, v + k);
    }
    if (k < K) {
        uint16_t pw[32] = {0}, pv[32] = {0};
        for (int64_t i = k; i < K; i++) pw[i - k] = w[i], pv[i - k] = v[i];
        TWO_STEP(pw, pv);
    }
    out[0] = hsum8(_mm256_add_ps(_mm256_add_ps(a[0], a[1]), _mm256_add_ps(a[2], a[3])));
    out[1] = hsum8(_mm256_add_ps(_mm256_add_ps(b[0], b[1]), _mm256_add_ps(b[2], b[3])));
}

/* Input rows are taken in blocks whose widened copy stays in the L2 cache while each
   weight row of a chunk meets them (a prefill's hundreds of rows do not fit). */
#define XF_BLOCK_BYTES (192 * 1024)

/* One input row: the chunk's two halves side by side (`dot_two`). */
static void linear_one(const void *ctx, int64_t begin, int64_t end) {
    const linear_args *a = ctx;
    const int64_t K = a->K, half = (end - begin) / 2;
    for (int64_t n = begin; n < begin + half; n++) {
        float out[2];
        dot_two(a->w + n * K, a->w + (n + half) * K, a->xf, K, out);
        put(a->bias, a->resid, a->y, n, n, out[0]);
        put(a->bias, a->resid, a->y, n + half, n + half, out[1]);
    }
    if ((end - begin) % 2) {
        float out;
        dot_rows_1(a->w + (end - 1) * K, a->xf, K, a->kp, &out);
        put(a->bias, a->resid, a->y, end - 1, end - 1, out);
    }
}

/* How many input rows (an even number) make one block of `kp`-wide widened rows. */
static inline int64_t block_rows(int64_t kp) {
    const int64_t rows = XF_BLOCK_BYTES / (kp * (int64_t)sizeof(float)) / 2 * 2;
    return rows < 2 ? 2 : rows;
}

static void linear_rows(const void *ctx, int64_t begin, int64_t end) {
    const linear_args *a = ctx;
    const int64_t M = a->M, N = a->N, K = a->K, kp = a->kp;
    const int64_t block = block_rows(kp);
    for (int64_t m1 = 0; m1 < M; m1 += block) {
        const int64_t m2 = m1 + block < M ? m1 + block : M;
        for (int64_t n = begin; n < end; n++) {
            const uint16_t *row = a->w + n * K;
            for (int64_t m0 = m1; m0 < m2; m0 += 2) {
                float out[2];
                const float *xs = a->xf + m0 * kp;
                if (m2 - m0 >= 2) {
                    dot_rows_2(row, xs, K, kp, out);
                    put(a->bias, a->resid, a->y, m0 * N + n, n, out[0]);
                    put(a->bias, a->resid, a->y, (m0 + 1) * N + n, n, out[1]);
                } else {
                    dot_rows_1(row, xs, K, kp, out);
                    put(a->bias, a->resid, a->y, m0 * N + n, n, out[0]);
                }
            }
        }
    }
}

/* Four weight rows with MB (1 or 2) widened input rows, for several input rows when not
   `exact`: each input vector is loaded once for the four weight rows, and the widened
   weights once for the input rows, one accumulator a pair (compute-bound there). A row's
   sums then run in another order than alone. */
#define TILE_STEP(W, STRIDE, MB)                                                             \
    do {                                                                                 \
        __m256 xl[MB], xh[MB];                                                           \
        _Pragma("GCC unroll 2") for (int j = 0; j < MB; j++) {                           \
            xl[j] = _mm256_load_ps(xf + j * kp + k);                                     \
            xh[j] = _mm256_load_ps(xf + j * kp + k + 8);                                 \
        }                                                                                \
        _Pragma("GCC unroll 4") for (int r = 0; r < 4; r++) {                            \
            const __m256i v = _mm256_loadu_si256((const __m256i *)((W) + r * (STRIDE))); \
            const __m256 l = widen_lo(v), h = widen_hi(v);                               \
            _Pragma("GCC unroll 2") for (int j = 0; j < MB; j++) {                       \
                acc[j][r] = _mm256_fmadd_ps(l, xl[j], acc[j][r]);                        \
                acc[j][r] = _mm256_fmadd_ps(h, xh[j], acc[j][r]);                        \
            }                                                                            \
        }                                                                                \
    } while (0)

#define TILE(MB)                                                                         \
    static inline void tile_4x##MB(const uint16_t *w, int64_t K, const float *xf,        \
                                    int64_t kp, float out[2][4]) {                       \
        __m256 acc[MB][4];                                                               \
        _Pragma("GCC unroll 2") for (int j = 0; j < MB; j++)                             \
            _Pragma("GCC unroll 4") for (int r = 0; r < 4; r++) acc[j][r] = _mm256_setzero_ps(); \
        int64_t k = 0;                                                                   \
        for (; k + 16 <= K; k += 16) TILE_STEP(w + k, K, MB);                                \
        if (k < K) {                                                                     \
            uint16_t pad[4][16] = {{0}};                                                 \
            for (int r = 0; r < 4; r++)                                                  \
                for (int64_t i = k; i < K; i++) pad[r][i - k] = w[r * K + i];            \
            TILE_STEP(&pad[0][0], 16, MB);                                                   \
        }                                                                                \
        _Pragma("GCC unroll 2") for (int j = 0; j < MB; j++)                             \
            _Pragma("GCC unroll 4") for (int r = 0; r < 4; r++) out[j][r] = hsum8(acc[j][r]); \
    }
TILE(1)
TILE(2)

static void linear_blocks(const void *ctx, int64_t begin, int64_t end) {
    const linear_args *a = ctx;
    const int64_t M = a->M, N = a->N, K = a->K, kp = a->kp;
    const int64_t block = block_rows(kp);
    for (int64_t m1 = 0; m1 < M; m1 += block) {
        const int64_t m2 = m1 + block < M ? m1 + block : M;
        for (int64_t blk = begin; blk < end; blk++) {
            const int64_t n0 = blk * 4;
            if (n0 + 4 > N) { /* the last rows, one at a time */
                for (int64_t n = n0; n < N; n++)
                    for (int64_t m = m1; m < m2; m++) {
                        float v;
                        dot_rows_1(a->w + n * K, a->xf + m * kp, K, kp, &v);
                        put(a->bias, a->resid, a->y, m * N + n, n, v);
                    }
                continue;
            }
            for (int64_t m0 = m1; m0 < m2; m0 += 2) {
                float out[2][4];
                const int mb = m2 - m0 >= 2 ? 2 : 1;
                if (mb == 2) tile_4x2(a->w + n0 * K, K, a->xf + m0 * kp, kp, out);
                else tile_4x1(a->w + n0 * K, K, a->xf + m0 * kp, kp, out);
                for (int j = 0; j < mb; j++)
                    for (int r = 0; r < 4; r++)
                        put(a->bias, a->resid, a->y, (m0 + j) * N + n0 + r, n0 + r, out[j][r]);
            }
        }
    }
}

/* The widened input rows live in a buffer of the calling thread, kept between calls (a
   decode step makes a few hundred) and freed with the thread. */
static pthread_key_t xf_key;
static pthread_once_t xf_once = PTHREAD_ONCE_INIT;
static __thread float *xf_buf;
static __thread size_t xf_cap;

static void xf_make_key(void) { pthread_key_create(&xf_key, free); }

static float *xf_for(size_t floats) {
    if (floats > xf_cap) {
        pthread_once(&xf_once, xf_make_key);
        free(xf_buf);
        xf_buf = aligned_alloc(XF_ALIGN, (floats * sizeof(float) + XF_ALIGN - 1) / XF_ALIGN * XF_ALIGN);
        xf_cap = xf_buf ? floats : 0;
        pthread_setspecific(xf_key, xf_buf);
    }
    return xf_buf;
}

/* One row streams two places of the weights at once; up to four rows, or any number
   with `exact`, stream the weight rows (memory-bound there); more take them four at a time (`linear_blocks`: 16 rows 1.4x, 32 rows 1.6x). */
static void linear_run(linear_args *a, int exact, int threads) {
    a->kp = (a->K + 31) / 32 * 32;
    float *xf = xf_for((size_t)(a->M * a->kp));
    if (!xf) abort(); /* a few MiB at most (a prefill chunk) */
    widen_rows(a->x, xf, a->M, a->K, a->kp);
    a->xf = xf;
    if (a->M == 1) parallel(a->N, threads, linear_one, a);
    else if (exact || a->M <= 4) parallel(a->N, threads, linear_rows, a);
    else parallel((a->N + 3) / 4, threads, linear_blocks, a);
}

/* -- the other operations ------------------------------------------------------------- */

static void norm_rows(const void *ctx, int64_t begin, int64_t end) {
    const norm_args *a = ctx;
    const int64_t K = a->K;
    for (int64_t m = begin; m < end; m++) {
        const uint16_t *xr = a->x + m * K;
        uint16_t *yr = a->y + m * K;
        __m256 acc = _mm256_setzero_ps();
        int64_t k = 0;
        for (; k + 8 <= K; k += 8) {
            const __m256 v = load8_f32(xr + k);
            acc = _mm256_fmadd_ps(v, v, acc);
        }
        float sum = hsum8(acc);
        for (; k < K; k++) sum += bf16_to_f32(xr[k]) * bf16_to_f32(xr[k]);
        const float scale = 1.0f / sqrtf(sum / (float)K + a->eps);
        const __m256 sv = _mm256_set1_ps(scale);
        for (k = 0; k + 8 <= K; k += 8)
            store8(yr + k, _mm256_mul_ps(load8_f32(a->weight + k),
                                         round8(_mm256_mul_ps(load8_f32(xr + k), sv))));
        for (; k < K; k++)
            yr[k] = f32_to_bf16(bf16_to_f32(a->weight[k]) * round_bf16(bf16_to_f32(xr[k]) * scale));
    }
}

static inline float dot_bf16(const uint16_t *p, const uint16_t *q, int64_t n) {
    __m256 acc = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) acc = _mm256_fmadd_ps(load8_f32(p + i), load8_f32(q + i), acc);
    float sum = hsum8(acc);
    for (; i < n; i++) sum += bf16_to_f32(p[i]) * bf16_to_f32(q[i]);
    return sum;
}

static void attention_part(const void *ctx, int64_t begin, int64_t end) {
    const attention_args *a = ctx;
    const int64_t heads = a->heads, kv_heads = a->kv_heads, dim = a->dim, cols = a->cols;
    const int64_t group = heads / kv_heads;
    for (int64_t item = begin; item < end; item++) {
        const int64_t b = item / heads, h = item % heads, n = a->reads[b];
        const uint16_t *qh = a->q + b * a->q_stride + h * dim;
        const int64_t base = ((a->lo + b) * kv_heads + h / group) * cols * dim;
        const uint16_t *kh = a->keys + base, *vh = a->values + base;
        float scores_stack[4096];
        float *heap = n > 4096 ? (float *)malloc(sizeof(float) * (size_t)n) : 0;
        if (n > 4096 && !heap) abort();
        float *scores = heap ? heap : scores_stack;
        float best = -INFINITY;
        for (int64_t t = 0; t < n; t++) {
            const float sc = dot_bf16(qh, kh + t * dim, dim) * a->scale;
            scores[t] = sc;
            if (sc > best) best = sc;
        }
        float total = 0.0f;
        int64_t t = 0;
        for (; t + 8 <= n; t += 8) {
            const __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(scores + t), _mm256_set1_ps(best)));
            _mm256_storeu_ps(scores + t, e);
            total += hsum8(e);
        }
        for (; t < n; t++) {
            scores[t] = expf(scores[t] - best);
            total += scores[t];
        }
        float acc[512];
        for (int64_t i = 0; i < dim; i++) acc[i] = 0.0f;
        for (t = 0; t < n; t++) {
            const __m256 p = _mm256_set1_ps(scores[t]);
            const uint16_t *vt = vh + t * dim;
            int64_t i = 0;
            for (; i + 8 <= dim; i += 8)
                _mm256_storeu_ps(acc + i, _mm256_fmadd_ps(p, load8_f32(vt + i), _mm256_loadu_ps(acc + i)));
            for (; i < dim; i++) acc[i] += scores[t] * bf16_to_f32(vt[i]);
        }
        uint16_t *oh = a->out + b * heads * dim + h * dim;
        for (int64_t i = 0; i < dim; i++) oh[i] = f32_to_bf16(acc[i] / total);
        free(heap);
    }
}

static void silu_rows(const void *ctx, int64_t begin, int64_t end) {
    const silu_args *a = ctx;
    const int64_t inter = a->inter;
    for (int64_t m = begin; m < end; m++) {
        const uint16_t *g = a->gu + m * 2 * inter, *u = g + inter;
        uint16_t *out = a->act + m * inter;
        int64_t i = 0;
        for (; i + 8 <= inter; i += 8) {
            const __m256 x = load8_f32(g + i);
            const __m256 e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), x));
            const __m256 silu = _mm256_div_ps(x, _mm256_add_ps(_mm256_set1_ps(1.0f), e));
            store8(out + i, _mm256_mul_ps(round8(silu), load8_f32(u + i)));
        }
        for (; i < inter; i++) {
            const float x = bf16_to_f32(g[i]);
            out[i] = f32_to_bf16(round_bf16(x / (1.0f + expf(-x))) * bf16_to_f32(u[i]));
        }
    }
}

static void argmax_rows(const void *ctx, int64_t begin, int64_t end) {
    const argmax_args *a = ctx;
    for (int64_t m = begin; m < end; m++) {
        const uint16_t *row = a->logits + m * a->N;
        __m256 best = _mm256_set1_ps(-INFINITY);
        int64_t i = 0;
        for (; i + 8 <= a->N; i += 8) best = _mm256_max_ps(best, load8_f32(row + i));
        float top = hmax8(best);
        for (; i < a->N; i++) top = fmaxf(top, bf16_to_f32(row[i]));
        int64_t at = 0;
        while (at < a->N && bf16_to_f32(row[at]) != top) at++;
        a->out[m] = at < a->N ? at : 0;
    }
}
