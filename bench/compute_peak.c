/* The bf16 dot-product peak of this CPU: `threads` threads each run AVX-512 BF16 dot
   products (32 multiply-adds each) on registers only, 12 independent chains, no memory.
   Prints multiply-adds per second. bench/engine.py builds and runs it (a ceiling for
   compute-bound work such as a batch of 16 decode rows or a prefill). */
#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define ROUNDS 50000000L

static void *work(void *out) {
    __m512 acc[12];
    for (int i = 0; i < 12; i++) acc[i] = _mm512_setzero_ps();
    __m512bh x = (__m512bh)_mm512_set1_epi16(0x3f80), y = x;
    for (long i = 0; i < ROUNDS; i++) {
#pragma GCC unroll 12
        for (int j = 0; j < 12; j++) acc[j] = _mm512_dpbf16_ps(acc[j], x, y);
        __asm__ volatile("" : "+v"(x));
    }
    float sum = 0;
    for (int i = 0; i < 12; i++) sum += _mm512_reduce_add_ps(acc[i]);
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
    printf("%.6e\n", threads * (double)ROUNDS * 12 * 32 / seconds);
    return out[0] == 0.0f;  /* keeps the sums live */
}
