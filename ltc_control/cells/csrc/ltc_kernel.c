/* Fused LTC kernels (forward + hand-written BPTT backward) over a sparse synapse list, for float32 and float64.
 *
 * C99 with the GCC/Clang vector extensions and no dependencies beyond libc/libm, so the system `cc` builds it in
 * about a second; the Python side (ltc_control/cells/ltc_fast.py) compiles it lazily into a user cache directory
 * and calls it through ctypes. ABI version: see LTC_KERNEL_ABI (the Python loader checks it).
 */
#define _POSIX_C_SOURCE 200112L /* posix_memalign */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define LTC_KERNEL_ABI 7
/* Lanes per batch chunk: 16 float32 = one 512-bit or two 256-bit registers; 8 float64 likewise. The lane loops
 * are written with explicit vector types: auto-vectorisation of the synapse scatter (num[dst] += ...) is defeated
 * by possible aliasing and then degrades to scalar code with store-forwarding stalls. */
#define LANES_F32 16
#define LANES_F64 8
#define VEC_ALIGN 64
/* default small-batch limits (see small_batch_limit_* below): about where the two paths cost the same for the
 * dense 16-neuron LTC and the 19-neuron NCP, T = 64, forward + backward (experiments/bench/ltc_small_batch.py) */
#define SMALL_BATCH_F32 8
#define SMALL_BATCH_F64 6

typedef float vf32 __attribute__((vector_size(4 * LANES_F32)));
typedef int32_t vi32 __attribute__((vector_size(4 * LANES_F32)));
typedef double vf64 __attribute__((vector_size(8 * LANES_F64)));

/* Batches of at most this many samples run sample by sample, vectorised over the synapses instead of the batch
 * lanes (RecurrentPPO's minibatches hold 1-8 sequences; a lane chunk would compute up to L - 1 copies). Set by
 * ltc_kernel_set_small_batch_* (clamped to [0, L]; 0 turns the path off); both paths give the same states. */
static int64_t small_batch_limit_f32 = SMALL_BATCH_F32;
static int64_t small_batch_limit_f64 = SMALL_BATCH_F64;

static int64_t clamp_limit(int64_t v, int64_t hi) { return v < 0 ? 0 : (v > hi ? hi : v); }
/* Sets the limit (negative: the default) and returns the previous one. */
int64_t ltc_kernel_set_small_batch_f32(int64_t v) {
    const int64_t old = small_batch_limit_f32;
    small_batch_limit_f32 = v < 0 ? SMALL_BATCH_F32 : clamp_limit(v, LANES_F32);
    return old;
}
int64_t ltc_kernel_set_small_batch_f64(int64_t v) {
    const int64_t old = small_batch_limit_f64;
    small_batch_limit_f64 = v < 0 ? SMALL_BATCH_F64 : clamp_limit(v, LANES_F64);
    return old;
}

int ltc_kernel_abi(void) { return LTC_KERNEL_ABI; }
int ltc_kernel_lanes_f32(void) { return LANES_F32; }
int ltc_kernel_lanes_f64(void) { return LANES_F64; }

static inline vf32 vsel_f32(vi32 mask, vf32 a, vf32 b) { return (vf32)((mask & (vi32)a) | (~mask & (vi32)b)); }

/* exp on float32 lanes: Cephes' expf polynomial (about 1 ulp), branch-free, inputs clamped to [-87, 88] so the
 * result stays finite and normal. */
static inline vf32 vexp_f32(vf32 x) {
    const vf32 hi = (vf32){0} + 88.0f, lo = (vf32){0} + -87.0f;
    x = vsel_f32(x > hi, hi, x);
    x = vsel_f32(x < lo, lo, x);
    vf32 fx = x * 1.44269504088896341f + 0.5f;
    /* floor(fx) for fx in [-126, 128): truncation of a positive value */
    vi32 i = __builtin_convertvector(fx + 128.0f, vi32) - 128;
    vf32 n = __builtin_convertvector(i, vf32);
    x = x - n * 0.693359375f + n * 2.12194440e-4f;
    vf32 z = x * x;
    vf32 y = ((((1.9875691500e-4f * x + 1.3981999507e-3f) * x + 8.3334519073e-3f) * x + 4.1665795894e-2f) * x +
              1.6666665459e-1f) * x +
             5.0000001201e-1f;
    y = y * z + x + 1.0f;
    vi32 bits = (i + 127) << 23;
    return y * (vf32)bits;
}

static inline vf32 vsigmoid_f32(vf32 z) { return 1.0f / (1.0f + vexp_f32(-z)); }

static inline vf64 vsigmoid_f64(vf64 z) {
    vf64 r;
    for (int l = 0; l < LANES_F64; ++l) r[l] = 1.0 / (1.0 + exp(-z[l]));
    return r;
}

#define REAL float
#define V vf32
#define L LANES_F32
#define FN(name) name##_f32
#define VSIGMOID vsigmoid_f32
#include "ltc_kernel_body.h"
#undef REAL
#undef V
#undef L
#undef FN
#undef VSIGMOID

#define REAL double
#define V vf64
#define L LANES_F64
#define FN(name) name##_f64
#define VSIGMOID vsigmoid_f64
#include "ltc_kernel_body.h"
#undef REAL
#undef V
#undef L
#undef FN
#undef VSIGMOID
