/* CfC forward kernel (no gradients): batch-1 control steps and no-grad sequences of ltc_control's CfC cells.
 *
 * C99, libc/libm only; ltc_control/cells/cfc_fast.py compiles it lazily (the LTC kernel's build cache and
 * compiler settings) and calls it through ctypes. ABI version: CFC_KERNEL_ABI (the Python loader checks it).
 *
 * meta (int64): width of a save_f row, unused, S, N, number of layers, mode (0 default, 1 no_gate, 2 pure),
 * backbone activation (0 none, 1 lecun_tanh, 2 tanh, 3 relu, 4 silu, 5 gelu), max width; then 10 entries per
 * layer: n, in, F0 (width of the first affine map), number of backbone layers after the first, backbone width U
 * (0: no backbone), offset of the layer's neurons in the state, offset of its weights in w, offset of its input
 * in the new state (-1: the sensory input x), offsets of its entries in a save_f row and a save_s row. Weights of a layer, each matrix transposed (input-major): W_u (in x F0),
 * W_h (n x F0), b0 (F0); per further backbone layer W (U x U), b (U); with a backbone the heads W (U x Hn), b (Hn);
 * in pure mode w_tau (n), A (n). H = 4 heads (ff1, ff2, time_a, time_b), 1 in pure mode.
 */
#include <math.h>
#include <stdint.h>
#include <stddef.h>

#define CFC_KERNEL_ABI 2
#define CFC_LAYER_META 10
#define CFC_MAX_LAYERS 64
#define CFC_MAX_WIDTH 4096 /* scratch lives on the stack: 3 * width values (the Python side checks) */
#define MODE_DEFAULT 0
#define MODE_NO_GATE 1
#define MODE_PURE 2
#define ACT_NONE 0
#define ACT_LECUN 1
#define ACT_TANH 2
#define ACT_RELU 3
#define ACT_SILU 4
#define ACT_GELU 5

int cfc_kernel_abi(void) { return CFC_KERNEL_ABI; }

#define REAL float
#define FN(name) name##_f32
#define TANH tanhf
#define EXP expf
#define ERF erff
#define FABS fabsf
#include "cfc_kernel_body.h"
#undef REAL
#undef FN
#undef TANH
#undef EXP
#undef ERF
#undef FABS

#define REAL double
#define FN(name) name##_f64
#define TANH tanh
#define EXP exp
#define ERF erf
#define FABS fabs
#include "cfc_kernel_body.h"
#undef REAL
#undef FN
#undef TANH
#undef EXP
#undef ERF
#undef FABS
