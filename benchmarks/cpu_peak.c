/* Peak multiply-add rate of one core's vector units, per instruction kind.
 * Each kernel runs N independent accumulator chains (more than latency x throughput) in a loop,
 * so the rate it reaches is the pipes' throughput, not their latency. One thread per core via pthreads.
 * Usage: cpu_peak KERNEL THREADS SECONDS  -> prints "MACS_PER_SECOND" */
#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define ITERS 100000L
typedef long (*kernel_fn)(long reps, float *sink);

static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }

/* The inputs are loop-invariant: an empty asm that "changes" them keeps the compiler from hoisting
 * the work out of the loop (it would hoist AVX2's vpmaddubsw + vpmaddwd). */
#define HIDE(v) __asm__ volatile("" : "+v"(v))
#define UNROLL12(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11)

__attribute__((target("avx2,fma"))) static long fp32_fma_ymm(long reps, float *sink) {
    __m256 a = _mm256_set1_ps(1.0001f), b = _mm256_set1_ps(0.9999f);
#define DECL(i) __m256 c##i = _mm256_set1_ps((float)i);
    UNROLL12(DECL)
#undef DECL
    for (long r = 0; r < reps; r++) for (long i = 0; i < ITERS; i++) {
        HIDE(a); HIDE(b);
#define STEP(i) c##i = _mm256_fmadd_ps(a, b, c##i);
        UNROLL12(STEP)
#undef STEP
    }
    __m256 s = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(c0, c1), _mm256_add_ps(c2, c3)), _mm256_add_ps(_mm256_add_ps(c4, c5), _mm256_add_ps(c6, c7)));
    s = _mm256_add_ps(s, _mm256_add_ps(_mm256_add_ps(c8, c9), _mm256_add_ps(c10, c11)));
    *sink = _mm256_cvtss_f32(s);
    return reps * ITERS * 12 * 8;
}

__attribute__((target("avx512f"))) static long fp32_fma_zmm(long reps, float *sink) {
    __m512 a = _mm512_set1_ps(1.0001f), b = _mm512_set1_ps(0.9999f);
#define DECL(i) __m512 c##i = _mm512_set1_ps((float)i);
    UNROLL12(DECL)
#undef DECL
    for (long r = 0; r < reps; r++) for (long i = 0; i < ITERS; i++) {
        HIDE(a); HIDE(b);
#define STEP(i) c##i = _mm512_fmadd_ps(a, b, c##i);
        UNROLL12(STEP)
#undef STEP
    }
    __m512 s = c0;
#define SUM(i) s = _mm512_add_ps(s, c##i);
    UNROLL12(SUM)
#undef SUM
    *sink = _mm512_reduce_add_ps(s);
    return reps * ITERS * 12 * 16;
}

/* u8 x s8 without VNNI: vpmaddubsw (pairs into s16, saturating) + vpmaddwd (to s32) + vpaddd, as MLAS does on AVX2. */
__attribute__((target("avx2"))) static long int8_avx2_ymm(long reps, float *sink) {
    __m256i a = _mm256_set1_epi8(3), b = _mm256_set1_epi8(5), ones = _mm256_set1_epi16(1);
#define DECL(i) __m256i c##i = _mm256_set1_epi32(i);
    UNROLL12(DECL)
#undef DECL
    for (long r = 0; r < reps; r++) for (long i = 0; i < ITERS; i++) {
        HIDE(a); HIDE(b);
#define STEP(i) HIDE(a); c##i = _mm256_add_epi32(c##i, _mm256_madd_epi16(_mm256_maddubs_epi16(a, b), ones));
        UNROLL12(STEP)
#undef STEP
    }
    __m256i s = c0;
#define SUM(i) s = _mm256_add_epi32(s, c##i);
    UNROLL12(SUM)
#undef SUM
    *sink = (float)_mm256_extract_epi32(s, 0);
    return reps * ITERS * 12 * 32;
}

__attribute__((target("avx512f,avx512vnni"))) static long int8_vnni_zmm(long reps, float *sink) {
    __m512i a = _mm512_set1_epi8(3), b = _mm512_set1_epi8(5);
#define DECL(i) __m512i c##i = _mm512_set1_epi32(i);
    UNROLL12(DECL)
#undef DECL
    for (long r = 0; r < reps; r++) for (long i = 0; i < ITERS; i++) {
        HIDE(a); HIDE(b);
#define STEP(i) c##i = _mm512_dpbusd_epi32(c##i, a, b);
        UNROLL12(STEP)
#undef STEP
    }
    __m512i s = c0;
#define SUM(i) s = _mm512_add_epi32(s, c##i);
    UNROLL12(SUM)
#undef SUM
    *sink = (float)_mm512_reduce_add_epi32(s);
    return reps * ITERS * 12 * 64;
}

__attribute__((target("avxvnni"))) static long int8_avxvnni_ymm(long reps, float *sink) {
    __m256i a = _mm256_set1_epi8(3), b = _mm256_set1_epi8(5);
#define DECL(i) __m256i c##i = _mm256_set1_epi32(i);
    UNROLL12(DECL)
#undef DECL
    for (long r = 0; r < reps; r++) for (long i = 0; i < ITERS; i++) {
        HIDE(a); HIDE(b);
#define STEP(i) c##i = _mm256_dpbusd_avx_epi32(c##i, a, b);
        UNROLL12(STEP)
#undef STEP
    }
    __m256i s = c0;
#define SUM(i) s = _mm256_add_epi32(s, c##i);
    UNROLL12(SUM)
#undef SUM
    *sink = (float)_mm256_extract_epi32(s, 0);
    return reps * ITERS * 12 * 32;
}

__attribute__((target("avx512f,avx512bf16"))) static long bf16_dot_zmm(long reps, float *sink) {
    __m512bh a = (__m512bh)_mm512_set1_epi16(0x3f80), b = (__m512bh)_mm512_set1_epi16(0x3f80);
#define DECL(i) __m512 c##i = _mm512_set1_ps((float)i);
    UNROLL12(DECL)
#undef DECL
    for (long r = 0; r < reps; r++) for (long i = 0; i < ITERS; i++) {
        HIDE(a); HIDE(b);
#define STEP(i) c##i = _mm512_dpbf16_ps(c##i, a, b);
        UNROLL12(STEP)
#undef STEP
    }
    __m512 s = c0;
#define SUM(i) s = _mm512_add_ps(s, c##i);
    UNROLL12(SUM)
#undef SUM
    *sink = _mm512_reduce_add_ps(s);
    return reps * ITERS * 12 * 32;
}

struct kernel { const char *name; const char *needs; kernel_fn fn; };
static const struct kernel KERNELS[] = {
    {"fp32_fma_ymm", "fma", fp32_fma_ymm},
    {"fp32_fma_zmm", "avx512f", fp32_fma_zmm},
    {"int8_avx2_ymm", "avx2", int8_avx2_ymm},
    {"int8_avxvnni_ymm", "avxvnni", int8_avxvnni_ymm},
    {"int8_vnni_zmm", "avx512vnni", int8_vnni_zmm},
    {"bf16_dot_zmm", "avx512bf16", bf16_dot_zmm},
};

struct job { kernel_fn fn; long reps; long macs; float sink; };
static void *run_job(void *arg) { struct job *j = arg; j->macs = j->fn(j->reps, &j->sink); return NULL; }

int main(int argc, char **argv) {
    if (argc == 2 && !strcmp(argv[1], "--list")) {
        for (size_t k = 0; k < sizeof KERNELS / sizeof *KERNELS; k++) printf("%s %s\n", KERNELS[k].name, KERNELS[k].needs);
        return 0;
    }
    if (argc != 4) { fprintf(stderr, "usage: %s KERNEL THREADS SECONDS | --list\n", argv[0]); return 2; }
    kernel_fn fn = NULL;
    for (size_t k = 0; k < sizeof KERNELS / sizeof *KERNELS; k++) if (!strcmp(argv[1], KERNELS[k].name)) fn = KERNELS[k].fn;
    if (!fn) { fprintf(stderr, "unknown kernel %s\n", argv[1]); return 2; }
    int threads = atoi(argv[2]); double seconds = atof(argv[3]);
    float sink; double t = now(); fn(1, &sink); double one = now() - t;   /* one rep: warms the clock, sizes the run */
    long reps = (long)(seconds / (one > 1e-6 ? one : 1e-6)) + 1;
    pthread_t tid[256]; struct job jobs[256];
    if (threads < 1 || threads > 256) return 2;
    t = now();
    for (int i = 0; i < threads; i++) { jobs[i] = (struct job){fn, reps, 0, 0}; pthread_create(&tid[i], NULL, run_job, &jobs[i]); }
    double macs = 0;
    for (int i = 0; i < threads; i++) { pthread_join(tid[i], NULL); macs += jobs[i].macs; }
    double elapsed = now() - t;
    printf("%.6e\n", macs / elapsed);
    return 0;
}
