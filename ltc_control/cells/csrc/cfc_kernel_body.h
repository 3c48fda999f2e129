/* Body of the CfC forward kernel, included once per floating-point type by cfc_kernel.c with REAL (the type),
 * FN(name) (the suffixed name) and the scalar math functions TANH, EXP, ERF defined. */

static inline REAL FN(cfc_act)(int act, REAL a) {
    switch (act) {
        case ACT_LECUN: return (REAL)1.7159 * TANH((REAL)0.666 * a);
        case ACT_TANH: return TANH(a);
        case ACT_RELU: return a > 0 ? a : (a == a ? (REAL)0 : a); /* NaN propagates, as in torch.relu */
        case ACT_SILU: return a / ((REAL)1 + EXP(-a));
        case ACT_GELU: return (REAL)0.5 * a * ((REAL)1 + ERF(a * (REAL)0.70710678118654752440));
        default: return a;
    }
}

/* acc[0:f] = bias + sum_k wt[k, 0:f] * v[k] for a transposed (k x f) weight: the inner loop runs over
 * contiguous outputs, so it vectorises without reassociating any sum. */
static inline void FN(cfc_affine)(REAL* restrict acc, const REAL* restrict bias, const REAL* restrict wt,
                                  const REAL* restrict v, int64_t k_n, int64_t f) {
    if (bias) {
        for (int64_t j = 0; j < f; ++j) acc[j] = bias[j];
    }
    for (int64_t k = 0; k < k_n; ++k) {
        const REAL vk = v[k];
        const REAL* restrict row = wt + k * f;
        for (int64_t j = 0; j < f; ++j) acc[j] += row[j] * vk;
    }
}

/* Forward of a CfC (stack of layers) over B batch-first sequences of T steps; see cfc_kernel.c for the layout of
 * meta and w. x: (B, T, S); h0: (B, N); ts: (B, T) or NULL (then ts_scalar); resets: (B, T) or NULL;
 * out: (B, T, N). save_f (B, T, meta[0]) and save_s (B, T, N), or NULL: what the backward pass needs (gated:
 * tanh(ff1), tanh(ff2) and the gate; pure: the head pre-activation and the exponential), each layer at its
 * offsets. Returns 0, or a negative error code. Thread-safe (no shared scratch). */
int FN(cfc_forward)(const int64_t* meta, int64_t B, int64_t T, const REAL* w, const REAL* x, const REAL* h0,
                    const REAL* ts, double ts_scalar, const REAL* resets, REAL* out, REAL* save_f,
                    REAL* save_s) {
    const int64_t FW = meta[0], S = meta[2], N = meta[3], NL = meta[4];
    const int mode = (int)meta[5], act = (int)meta[6];
    const int64_t maxw = meta[7];
    if (NL < 1 || NL > CFC_MAX_LAYERS || maxw < 1 || maxw > CFC_MAX_WIDTH || N > maxw) return -1;
    REAL scratch[3 * maxw];
    REAL* a = scratch;
    REAL* z = scratch + maxw;
    REAL* hb = scratch + 2 * maxw; /* the held state, (1 - d) * h after an episode reset; N <= maxw */
    for (int64_t b = 0; b < B; ++b) {
        const REAL* hold = h0 + b * N;
        for (int64_t t = 0; t < T; ++t) {
            const int64_t bt = b * T + t;
            if (resets) {
                const REAL keep = (REAL)1 - resets[bt];
                for (int64_t j = 0; j < N; ++j) hb[j] = keep * hold[j];
                hold = hb;
            }
            const REAL tsv = ts ? ts[bt] : (REAL)ts_scalar;
            REAL* o = out + bt * N;
            for (int64_t l = 0; l < NL; ++l) {
                const int64_t* m = meta + 8 + CFC_LAYER_META * l;
                const int64_t n = m[0], in = m[1], f0 = m[2], nmid = m[3], U = m[4], so = m[5], in_off = m[7];
                const REAL* p = w + m[6];
                const REAL* u = in_off < 0 ? x + bt * S : o + in_off;
                const REAL* wu = p;
                const REAL* wh = wu + in * f0;
                const REAL* b0 = wh + n * f0;
                p = b0 + f0;
                FN(cfc_affine)(a, b0, wu, u, in, f0);
                FN(cfc_affine)(a, NULL, wh, hold + so, n, f0);
                const int64_t hn = mode == MODE_PURE ? n : 4 * n;
                const REAL* pre = a;
                if (U > 0) {
                    for (int64_t j = 0; j < U; ++j) z[j] = FN(cfc_act)(act, a[j]);
                    for (int64_t k = 0; k < nmid; ++k) {
                        FN(cfc_affine)(a, p + U * U, p, z, U, U);
                        p += U * U + U;
                        for (int64_t j = 0; j < U; ++j) z[j] = FN(cfc_act)(act, a[j]);
                    }
                    FN(cfc_affine)(a, p + U * hn, p, z, U, hn);
                    p += U * hn + hn;
                }
                REAL* dst = o + so;
                REAL* sf = save_f ? save_f + bt * FW + m[8] : NULL;
                REAL* ss = save_s ? save_s + bt * N + m[9] : NULL;
                if (mode == MODE_PURE) {
                    const REAL* w_tau = p;
                    const REAL* A = p + n;
                    for (int64_t j = 0; j < n; ++j) {
                        const REAL e = EXP(-tsv * (FABS(w_tau[j]) + FABS(pre[j])));
                        dst[j] = -A[j] * e * pre[j] + A[j];
                        if (sf) {
                            sf[j] = pre[j];
                            ss[j] = e;
                        }
                    }
                } else {
                    for (int64_t j = 0; j < n; ++j) {
                        const REAL f1 = TANH(pre[j]), f2 = TANH(pre[n + j]);
                        const REAL g = (REAL)1 / ((REAL)1 + EXP(-(pre[2 * n + j] * tsv + pre[3 * n + j])));
                        dst[j] = mode == MODE_NO_GATE ? f1 + g * f2 : f1 * ((REAL)1 - g) + g * f2;
                        if (sf) {
                            sf[j] = f1;
                            sf[n + j] = f2;
                            ss[j] = g;
                        }
                    }
                }
            }
            hold = o;
        }
    }
    return 0;
}
