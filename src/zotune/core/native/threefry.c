/* zotune's native CPU kernel for the Threefry-2x32 perturbation stream: p <- decay * p + alpha * z in place.
 *
 * The same numbers as the torch kernels of zotune/core/threefry.py and zotune/core/samplers.py, bit for bit
 * (tests/test_native.py compares them for every kind, round count, dtype and layout): Threefry-2x32-R
 * (Salmon et al., SC 2011) of counter (lo + t, hi) under key (k0, k1), then the same float32 transform,
 * operation by operation, rounded the same way. -ffp-contract=off keeps the compiler from fusing
 * multiply-adds, which would change the last bit.
 *
 * Why it exists: Threefry's 20 rounds are a serial chain (add, rotate, xor). Inductor's kernel runs one
 * vector of counters at a time, so on an AVX2 CPU (Zen 2) it waits on that chain: 1.69 ns per element for
 * `uniform` over a 32M tensor, 2.33 for `gaussian`. Here every operation works on LANES = 32 counters at once
 * (4 AVX2 registers, 2 AVX-512 ones, 8 NEON ones), so four independent chains interleave and the shifts take
 * immediate counts: 0.53 and 1.01 ns (benchmarks/rng/native_pass.py, results/native_pass.avx2-zen2.*).
 * GCC and Clang vector extensions, plus the AVX square root where the compiler targets AVX: the file builds
 * for any target the compiler knows.
 */
#include <stdint.h>
#include <string.h>
#include <math.h>
#if defined(__AVX__)
#include <immintrin.h> /* _mm256_sqrt_ps: GCC and Clang both have it (GCC's __builtin_ia32_sqrtps256 is GCC's only) */
#endif

#define LANES 32 /* 16 lanes were slower on Zen 2 (an ad-hoc trial while building this file) */
typedef uint32_t u32v __attribute__((vector_size(LANES * 4)));
typedef int32_t i32v __attribute__((vector_size(LANES * 4)));
typedef float f32v __attribute__((vector_size(LANES * 4)));

#define INLINE static inline __attribute__((always_inline))

enum { KIND_GAUSSIAN = 0, KIND_UNIFORM = 1, KIND_RADEMACHER = 2 };

typedef float f32x8 __attribute__((vector_size(32)));

/* the four 8-lane quarters of a 32-lane vector, and back: register moves, never memory */
#define QUARTER(v, q) __builtin_shufflevector(v, v, 8 * (q), 8 * (q) + 1, 8 * (q) + 2, 8 * (q) + 3, 8 * (q) + 4,   \
                                              8 * (q) + 5, 8 * (q) + 6, 8 * (q) + 7)
#define HALF_OF(a, b) __builtin_shufflevector(a, b, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)
#define WHOLE_OF(a, b) __builtin_shufflevector(a, b, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, \
                                               19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31)
#define JOIN4(a, b, c, d) WHOLE_OF(HALF_OF(a, b), HALF_OF(c, d))

/* rotl32 of every lane, by a constant: immediate shifts. (Rotations by 16 and 24 as byte shuffles were tried
 * ad hoc: slower on Zen 2, as GCC 12 moved the quarters through memory.) */
INLINE u32v rotl(u32v x, const int r) { return (x << r) | (x >> (32 - r)); }

static const int ROTATIONS[8] = {13, 15, 26, 6, 17, 29, 16, 24};

/* Threefry-2x32-rounds in place on (x0, x1), which come in as the counter words. */
INLINE void threefry(u32v *x0, u32v *x1, uint32_t k0, uint32_t k1, const int rounds) {
    const uint32_t ks[3] = {k0, k1, 0x1BD11BDAu ^ k0 ^ k1};
    u32v a = *x0 + k0, b = *x1 + k1;
#pragma GCC unroll 20
    for (int r = 0; r < rounds; r++) {
        a += b;
        b = rotl(b, ROTATIONS[r % 8]) ^ a;
        if (r % 4 == 3) {
            const int s = (r + 1) / 4;
            a += ks[s % 3];
            b += ks[(s + 1) % 3] + (uint32_t)s;
        }
    }
    *x0 = a;
    *x1 = b;
}

INLINE f32v choose(i32v mask, f32v yes, f32v no) {
    return (f32v)(((i32v)yes & mask) | ((i32v)no & ~mask));
}

INLINE f32v to_float(i32v x) { return __builtin_convertvector(x, f32v); }

INLINE f32x8 sqrt8(f32x8 x) {
#if defined(__AVX__)
    return (f32x8)_mm256_sqrt_ps((__m256)x);
#else
    for (int i = 0; i < 8; i++) x[i] = __builtin_sqrtf(x[i]);
    return x;
#endif
}

/* the IEEE (correctly rounded) square root of every lane, as the compiled torch kernel takes it */
INLINE f32v sqrt_lanes(f32v x) {
    return JOIN4(sqrt8(QUARTER(x, 0)), sqrt8(QUARTER(x, 1)), sqrt8(QUARTER(x, 2)), sqrt8(QUARTER(x, 3)));
}

/* -2 ln u, u = (top23(w0) + 1/2) / 2^23: threefry.py::_minus_two_log_uniform, operation by operation */
INLINE f32v minus_two_log_uniform(i32v w0) {
    f32v v = to_float((w0 >> 9) & 0x7FFFFF) + 0.5f;
    i32v bits = (i32v)v;
    i32v exponent = (bits >> 23) - 127;
    i32v bits_f = (bits & 0x7FFFFF) | 0x3F800000;
    f32v f = (f32v)bits_f;
    /* f > sqrt 2 (as float32), as a -1 / 0 mask from the bits: both are floats in [1, 2), which order as their
     * bits do, and a vector comparison of 32 lanes was lowered lane by lane by GCC 12 */
    i32v high = (0x3FB504F3 - bits_f) >> 31;
    f = choose(high, f * 0.5f, f);
    exponent = exponent - high;  /* a true comparison is -1 */
    f32v s = (f - 1.0f) / (f + 1.0f);
    f32v s2 = s * s;
    f32v log_f = 2.0f * s * (1.0f + s2 * ((float)(1.0 / 3.0) + s2 * (0.2f + s2 * ((float)(1.0 / 7.0)
                                                                       + s2 * (float)(1.0 / 9.0)))));
    return 2.0f * (to_float(23 - exponent) * 0.6931471805599453f - log_f);
}

/* cos and sin of 2 pi top24(w1) / 2^24: threefry.py::_cos_sin_turn */
INLINE void cos_sin_turn(i32v w1, f32v *cos_t, f32v *sin_t) {
    i32v a = (w1 >> 8) & 0xFFFFFF;
    i32v rounded = (a + (1 << 21)) >> 22;
    f32v x = to_float(a - (rounded << 22)) * 3.7450702829239286e-07f;
    i32v quadrant = rounded & 3;
    f32v x2 = x * x;
    f32v sin_x = x * (1.0f + x2 * (-0.1666665467619051f + x2 * (0.008332165610287573f
                                                                 + x2 * -0.0001951593233680722f)));
    f32v cos_x = 1.0f + x2 * (-0.4999999971766387f + x2 * (0.041666622695629034f + x2 * (-0.0013886747786927695f
                                                                                    + x2 * 2.438918279477724e-05f)));
    i32v odd = -(quadrant & 1);  /* -1 / 0 */
    f32v cos_sign = 1.0f - to_float((quadrant + 1) & 2);
    f32v sin_sign = 1.0f - to_float(quadrant & 2);
    *cos_t = choose(odd, sin_x, cos_x) * cos_sign;
    *sin_t = choose(odd, cos_x, sin_x) * sin_sign;
}

/* the two numbers of LANES draws with counters (lo + t + lane, hi) */
INLINE void draw(uint32_t lo_t, uint32_t hi, uint32_t k0, uint32_t k1, const int kind, const int rounds,
                 f32v *z0, f32v *z1) {
    u32v c0, c1;
    for (int i = 0; i < LANES; i++) {
        c0[i] = lo_t + (uint32_t)i;
        c1[i] = hi;
    }
    threefry(&c0, &c1, k0, k1, rounds);
    i32v w0 = (i32v)c0, w1 = (i32v)c1;
    if (kind == KIND_GAUSSIAN) {
        f32v radius = sqrt_lanes(minus_two_log_uniform(w0));
        f32v cos_t, sin_t;
        cos_sin_turn(w1, &cos_t, &sin_t);
        *z0 = radius * cos_t;
        *z1 = radius * sin_t;
    } else if (kind == KIND_UNIFORM) {
        *z0 = to_float((w0 >> 8) & 0xFFFFFF) * 2.0647654623614278e-07f - 1.7320508075688772f;
        *z1 = to_float((w1 >> 8) & 0xFFFFFF) * 2.0647654623614278e-07f - 1.7320508075688772f;
    } else {
        *z0 = 1.0f - 2.0f * to_float((w0 >> 31) & 1);
        *z1 = 1.0f - 2.0f * to_float((w1 >> 31) & 1);
    }
}

/* samplers.py::_blend_: float32 p * decay + z * alpha, each product and the sum rounded to float32 */
INLINE f32v blend(f32v p, f32v z, float alpha, float decay) { return p * decay + z * alpha; }

INLINE f32v load_f32(const float *p, int count) {
    f32v v = {0};
    memcpy(&v, p, (size_t)count * 4);
    return v;
}

INLINE void store_f32(float *p, f32v v, int count) { memcpy(p, &v, (size_t)count * 4); }

/* bfloat16 <-> float32: exact widening; narrowing rounds to nearest even (torch's .to(bfloat16)), NaN stays NaN */
INLINE f32v load_bf16(const uint16_t *p, int count) {
    u32v v = {0};
    for (int i = 0; i < count; i++) v[i] = (uint32_t)p[i] << 16;
    return (f32v)v;
}

INLINE void store_bf16(uint16_t *p, f32v x, int count) {
    u32v bits = (u32v)x;
    u32v rounded = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
    i32v nan = (i32v)((bits & 0x7FFFFFFFu) > 0x7F800000u);
    u32v quiet = (bits >> 16) | 0x40u;
    u32v out = (rounded & ~(u32v)nan) | (quiet & (u32v)nan);
    for (int i = 0; i < count; i++) p[i] = (uint16_t)out[i];
}

#define BLOCK_ELEMENTS ((int64_t)1 << 21) /* samplers.py THREEFRY_BLOCK */

/* One exported kernel per (dtype, kind, rounds), written out by the macro so that KIND and ROUNDS are literals
 * inside the OpenMP region: GCC outlines that region before inlining, and constants passed in as arguments
 * arrived there as variables (a round loop with variable shift counts, several times slower).
 *
 * The tensor: blocks of BLOCK_ELEMENTS (the last one shorter); in a block of 2m elements at element `start`,
 * pair t (counter (lo + t, hi), lo and hi the low 31 and the high bits of start / 2) gives element t its first
 * number and element m + t its second. For odd n the last element takes the first number of pair (n - 1) / 2. */
#define KERNEL(DTYPE, TYPE, LOAD, STORE, KIND, KIND_ID, ROUNDS)                                              \
    void zotune_threefry##ROUNDS##_##KIND##_##DTYPE(void *data, int64_t n, uint32_t k0, uint32_t k1,        \
                                                     double alpha64, double decay64, int threads) {          \
        TYPE *p = (TYPE *)data;                                                                              \
        const float alpha = (float)alpha64, decay = (float)decay64;                                          \
        const int64_t even = n - n % 2;                                                                      \
        _Pragma("omp parallel num_threads(threads) if(threads > 1 && even >= 32768)")                        \
        for (int64_t start = 0; start < even; start += BLOCK_ELEMENTS) {                                     \
            const int64_t m = (even - start < BLOCK_ELEMENTS ? even - start : BLOCK_ELEMENTS) / 2;           \
            const uint64_t pair = (uint64_t)start / 2;                                                       \
            const uint32_t lo = (uint32_t)(pair & 0x7FFFFFFFu), hi = (uint32_t)(pair >> 31);                 \
            TYPE *first = p + start;                                                                         \
            _Pragma("omp for schedule(static)")                                                              \
            for (int64_t t = 0; t < m; t += LANES) {                                                         \
                const int count = m - t < LANES ? (int)(m - t) : LANES;                                      \
                f32v z0, z1;                                                                                 \
                draw(lo + (uint32_t)t, hi, k0, k1, KIND_ID, ROUNDS, &z0, &z1);                               \
                if (count == LANES) { /* the full-width path, with constant-size loads and stores */         \
                    STORE(first + t, blend(LOAD(first + t, LANES), z0, alpha, decay), LANES);                \
                    STORE(first + m + t, blend(LOAD(first + m + t, LANES), z1, alpha, decay), LANES);        \
                } else {                                                                                     \
                    STORE(first + t, blend(LOAD(first + t, count), z0, alpha, decay), count);                \
                    STORE(first + m + t, blend(LOAD(first + m + t, count), z1, alpha, decay), count);        \
                }                                                                                            \
            }                                                                                                \
        }                                                                                                    \
        if (n % 2) {                                                                                         \
            const uint64_t pair = (uint64_t)(n - 1) / 2;                                                     \
            f32v z0, z1;                                                                                     \
            draw((uint32_t)(pair & 0x7FFFFFFFu), (uint32_t)(pair >> 31), k0, k1, KIND_ID, ROUNDS, &z0, &z1); \
            STORE(p + n - 1, blend(LOAD(p + n - 1, 1), z0, alpha, decay), 1);                                \
        }                                                                                                    \
    }

#define KERNELS(ROUNDS)                                                                                      \
    KERNEL(f32, float, load_f32, store_f32, gaussian, KIND_GAUSSIAN, ROUNDS)                                 \
    KERNEL(f32, float, load_f32, store_f32, uniform, KIND_UNIFORM, ROUNDS)                                   \
    KERNEL(f32, float, load_f32, store_f32, rademacher, KIND_RADEMACHER, ROUNDS)                             \
    KERNEL(bf16, uint16_t, load_bf16, store_bf16, gaussian, KIND_GAUSSIAN, ROUNDS)                           \
    KERNEL(bf16, uint16_t, load_bf16, store_bf16, uniform, KIND_UNIFORM, ROUNDS)                             \
    KERNEL(bf16, uint16_t, load_bf16, store_bf16, rademacher, KIND_RADEMACHER, ROUNDS)

KERNELS(20)
KERNELS(13)

/* the version of this file's stream and calling convention, checked by zotune/core/native.py */
int zotune_native_abi(void) { return 2; }

/* whether the passes run on several threads: a compiler without OpenMP (Apple's clang; zig cc, whose -fopenmp
 * build cannot load) builds the one-thread kernel, and zotune says so in its benchmarks' machine line */
int zotune_native_openmp(void) {
#if defined(_OPENMP)
    return 1;
#else
    return 0;
#endif
}
