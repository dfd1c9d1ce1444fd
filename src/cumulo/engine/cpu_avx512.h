/* The kernels on AVX-512 with BF16 (AMD Zen 4 and later, Intel Cooper Lake, Sapphire
   Rapids and later), for cpu_kernels.c. */

/* How far ahead (bytes) the weights being streamed are asked into the L2 cache: the
   hardware prefetchers alone leave a fifth of the bandwidth unused here. */
#define PREFETCH 2048

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

/* RMS norm as Llama's: y = weight * bf16(x * rsqrt(mean(x^2) + eps)), x [M, K]. */
static inline __m512 round16(__m512 v) { return _mm512_cvtpbh_ps(_mm512_cvtneps_pbh(v)); }

static inline void store16(uint16_t *p, __m512 v) {
    _mm256_storeu_si256((__m256i *)p, (__m256i)_mm512_cvtneps_pbh(v));
}

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

static void linear_run(linear_args *a, int exact, int threads) {
    /* Rows while the input rows stay in the L1 cache beside the streamed weights. */
    if (exact || a->M == 1 || (a->M <= 4 && a->M * a->K <= 8192))
        parallel(a->N, threads, linear_rows, a);
    else
        parallel((a->N + 3) / 4, threads, linear_blocks, a);
}
