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

/* The inputs are loop-invariant: an empty asm that "changes" one keeps the compiler from hoisting work out of the
 * loop (it would hoist AVX2's vpmaddubsw + vpmaddwd, which do not depend on the accumulator). */
#define HIDE(v) __asm__ volatile("" : "+v"(v))

/* One kernel per instruction kind: 12 accumulators IN_T/ACC_T wide, each updated by STEP(acc, a, b) every
 * iteration, LANES multiply-adds per update; ADD sums the accumulators at the end, FIRST reads one lane into the sink
 * (so the compiler cannot drop the loop). HIDE(a) before every update keeps AVX2's a x b out of the loop. */
#define KERNEL(NAME, TARGET, IN_T, ACC_T, SET_IN, SET_ACC, STEP, ADD, FIRST, LANES)                   \
    __attribute__((target(TARGET))) static long NAME(long reps, float *sink) {                      \
        IN_T a = SET_IN(3), b = SET_IN(5);                                                          \
        ACC_T c[12];                                                                                \
        for (int k = 0; k < 12; k++) c[k] = SET_ACC(k);                                             \
        for (long r = 0; r < reps; r++) for (long i = 0; i < ITERS; i++) {                          \
            HIDE(b);                                                                                \
            HIDE(a); c[0] = STEP(c[0], a, b);  HIDE(a); c[1] = STEP(c[1], a, b);                    \
            HIDE(a); c[2] = STEP(c[2], a, b);  HIDE(a); c[3] = STEP(c[3], a, b);                    \
            HIDE(a); c[4] = STEP(c[4], a, b);  HIDE(a); c[5] = STEP(c[5], a, b);                    \
            HIDE(a); c[6] = STEP(c[6], a, b);  HIDE(a); c[7] = STEP(c[7], a, b);                    \
            HIDE(a); c[8] = STEP(c[8], a, b);  HIDE(a); c[9] = STEP(c[9], a, b);                    \
            HIDE(a); c[10] = STEP(c[10], a, b); HIDE(a); c[11] = STEP(c[11], a, b);                 \
        }                                                                                           \
        ACC_T s = c[0];                                                                             \
        for (int k = 1; k < 12; k++) s = ADD(s, c[k]);                                              \
        *sink = FIRST(s);                                                                           \
        return reps * ITERS * 12 * LANES;                                                           \
    }

/* Inputs: small integers, or 1.0 in bf16 (0x3f80); their values do not change the instruction's speed. */
#define SET_PS256(v) _mm256_set1_ps((float)(v) * 0.25f)
#define SET_PS512(v) _mm512_set1_ps((float)(v) * 0.25f)
#define SET_I8_256(v) _mm256_set1_epi8((char)(v))
#define SET_I8_512(v) _mm512_set1_epi8((char)(v))
#define SET_I32_256(v) _mm256_set1_epi32(v)
#define SET_I32_512(v) _mm512_set1_epi32(v)
#define SET_BF16_512(v) ((__m512bh)_mm512_set1_epi16(0x3f80))

#define FMA256(c, a, b) _mm256_fmadd_ps(a, b, c)
#define FMA512(c, a, b) _mm512_fmadd_ps(a, b, c)
/* u8 x s8 without VNNI, as MLAS does on AVX2: pairs into s16 (saturating), then pairs into s32, then accumulate. */
#define MADD_AVX2(c, a, b) _mm256_add_epi32(c, _mm256_madd_epi16(_mm256_maddubs_epi16(a, b), _mm256_set1_epi16(1)))
#define DPBUSD256(c, a, b) _mm256_dpbusd_avx_epi32(c, a, b)
#define DPBUSD512(c, a, b) _mm512_dpbusd_epi32(c, a, b)
#define DPBF16(c, a, b) _mm512_dpbf16_ps(c, a, b)

#define FIRST_PS256(s) _mm256_cvtss_f32(s)
#define FIRST_PS512(s) _mm512_cvtss_f32(s)
#define FIRST_I32_256(s) ((float)_mm256_extract_epi32(s, 0))
#define FIRST_I32_512(s) ((float)_mm_cvtsi128_si32(_mm512_castsi512_si128(s)))

KERNEL(fp32_fma_ymm, "avx2,fma", __m256, __m256, SET_PS256, SET_PS256, FMA256, _mm256_add_ps, FIRST_PS256, 8)
KERNEL(fp32_fma_zmm, "avx512f", __m512, __m512, SET_PS512, SET_PS512, FMA512, _mm512_add_ps, FIRST_PS512, 16)
KERNEL(int8_avx2_ymm, "avx2", __m256i, __m256i, SET_I8_256, SET_I32_256, MADD_AVX2, _mm256_add_epi32, FIRST_I32_256, 32)
KERNEL(int8_avxvnni_ymm, "avxvnni", __m256i, __m256i, SET_I8_256, SET_I32_256, DPBUSD256, _mm256_add_epi32, FIRST_I32_256, 32)
KERNEL(int8_vnni_zmm, "avx512f,avx512vnni", __m512i, __m512i, SET_I8_512, SET_I32_512, DPBUSD512, _mm512_add_epi32,
       FIRST_I32_512, 64)
KERNEL(bf16_dot_zmm, "avx512f,avx512bf16", __m512bh, __m512, SET_BF16_512, SET_PS512, DPBF16, _mm512_add_ps, FIRST_PS512, 32)

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
    for (int i = 0; i < threads; i++) {
        jobs[i] = (struct job){fn, reps, 0, 0};
        if (pthread_create(&tid[i], NULL, run_job, &jobs[i]) != 0) { fprintf(stderr, "cannot start thread %d\n", i); return 3; }
    }
    double macs = 0;
    for (int i = 0; i < threads; i++) { pthread_join(tid[i], NULL); macs += jobs[i].macs; }
    double elapsed = now() - t;
    printf("%.6e\n", macs / elapsed);
    return 0;
}
