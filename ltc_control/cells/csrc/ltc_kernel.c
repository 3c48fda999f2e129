/* Fused LTC kernels (forward + hand-written BPTT backward) over a sparse synapse list, for float32 and float64.
 *
 * Plain C99 with no dependencies beyond libc/libm, so the system `cc` builds it in well under a second; the Python
 * side (ltc_control/cells/ltc_fast.py) compiles it lazily into a user cache directory and calls it via ctypes.
 * ABI version: see LTC_KERNEL_ABI below (the Python loader checks it).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define LTC_KERNEL_ABI 1

int ltc_kernel_abi(void) { return LTC_KERNEL_ABI; }

/* exp for float32 lanes: Cephes' expf polynomial (about 1 ulp), written branch-free so that the compiler
 * vectorises the batch loops without needing libmvec or -ffast-math (which would also change NaN handling). */
static inline float ltc_expf(float x) {
    x = x > 88.0f ? 88.0f : x;
    x = x < -87.0f ? -87.0f : x;
    float fx = x * 1.44269504088896341f + 0.5f;
    int32_t i = (int32_t)fx;
    i -= ((float)i > fx); /* floor for negative values */
    float n = (float)i;
    x = x - n * 0.693359375f + n * 2.12194440e-4f;
    float z = x * x;
    float y = ((((1.9875691500e-4f * x + 1.3981999507e-3f) * x + 8.3334519073e-3f) * x + 4.1665795894e-2f) * x +
               1.6666665459e-1f) * x +
              5.0000001201e-1f;
    y = y * z + x + 1.0f;
    union {
        int32_t i;
        float f;
    } pow2n;
    pow2n.i = (i + 127) << 23;
    return y * pow2n.f;
}

#define REAL float
#define FN(name) name##_f32
#define SIGMOID(z) (1.0f / (1.0f + ltc_expf(-(z))))
#include "ltc_kernel_body.h"
#undef REAL
#undef FN
#undef SIGMOID

#define REAL double
#define FN(name) name##_f64
#define SIGMOID(z) (1.0 / (1.0 + exp(-(z))))
#include "ltc_kernel_body.h"
#undef REAL
#undef FN
#undef SIGMOID
