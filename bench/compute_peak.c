/* The matrix-product peak of this CPU for bfloat16 weights: `threads` threads each run
   12 independent chains of multiply-adds on registers only, no memory. On AVX-512 BF16
   the bf16 dot-product instruction (32 multiply-adds each); on AVX2 the float32 fused
   multiply-add (8 each: these CPUs widen bf16 to float32, as cumulo's kernels do).
   Prints multiply-adds per second. bench/engine.py builds and runs it (a ceiling for
   compute-bound work such as a batch of 16 decode rows or a prefill). */
#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define ROUNDS 50000000L

#if defined(__AVX512BF16__)
#define LANES 32
typedef __m512 acc_t;
#define ZERO() _mm512_setzero_ps()
#define STEP(a, x, y) _mm512_dpbf16_ps(a, x, y)
#define SUM(a) _mm512_reduce_add_ps(a)
typedef __m512bh in_t;
#define INPUT() ((__m512bh)_mm512_set1_epi16(0x3f80))
#else
#define LANES 8
typedef __m256 acc_t;
#define ZERO() _mm256_setzero_ps()
#define STEP(a, x, y) _mm256_fmadd_ps(x, y, a)
#define SUM(a) (_mm256_cvtss_f32(a))
typedef __m256 in_t;
#define INPUT() _mm256_set1_ps(1.0f)
#endif

static void *work(void *out) {
    acc_t acc[12];
    for (int i = 0; i < 12; i++) acc[i] = ZERO();
    in_t x = INPUT(), y = x;
    for (long i = 0; i < ROUNDS; i++) {
#pragma GCC unroll 12
        for (int j = 0; j < 12; j++) acc[j] = STEP(acc[j], x, y);
        __asm__ volatile("" : "+v"(x));
    }
    float sum = 0;
    for (int i = 0; i < 12; i++) sum += SUM(acc[i]);
    *(float *)out = sum;
    return NULL;
}

int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 1;
    if (threads < 1 || threads > 256) return 2;
    pthread_t th[256];
    float out[256];
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (int i = 0; i < threads; i++) pthread_create(&th[i], NULL, work, &out[i]);
    for (int i = 0; i < threads; i++) pthread_join(th[i], NULL);
    clock_gettime(CLOCK_MONOTONIC, &b);
    double seconds = (b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) * 1e-9;
    printf("%.6e\n", threads * (double)ROUNDS * 12 * LANES / seconds);
    return out[0] == 0.0f;  /* keeps the sums live */
}
