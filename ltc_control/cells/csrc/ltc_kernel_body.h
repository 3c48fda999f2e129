/* Body of the fused LTC sequence kernel, included twice by ltc_kernel.c (REAL = float, then double).
 *
 * Layout inside the kernel is neuron-major with the batch innermost ("lanes"): v[j * B + b]. Every inner loop runs
 * over the batch, so the compiler vectorises it, and each synapse of the sparse edge list costs B lane operations:
 * the cost grows with the number of synapses, not with N^2.
 *
 * Equations (h = dt / K, K unfolds per input step, sensory terms held over the K unfolds):
 *   s_sens[k->j] = sw * sigmoid(ssigma * (x[k] - smu));  snum_j = sum s_sens * serev;  sden_j = sum s_sens
 *   repeat K times:
 *     s[i->j] = w * sigmoid(sigma * (v_i - mu))
 *     v_j = (cm_j/h * v_j + gleak_j * vleak_j + sum s * erev + snum_j) / (cm_j/h + gleak_j + sum s + sden_j + eps)
 * Parameters arrive already constrained (softplus applied by the caller); the gradients returned are with respect
 * to those constrained values, and autograd chains through the constraint.
 */

typedef struct {
    const REAL *gleak, *vleak, *cm;          /* (N) */
    const REAL *w, *sigma, *mu, *erev;       /* (N, N) dense, read at the edges only */
    const REAL *sw, *ssigma, *smu, *serev;   /* (S, N) dense, read at the sensory edges only */
} FN(params_t);

/* Per-edge parameters gathered once per call: 4 recurrent and 4 sensory values per synapse. */
static void FN(gather)(const FN(params_t) * p, const int32_t *edges, int64_t E, const int32_t *sedges, int64_t ES,
                       int64_t N, REAL *ew, REAL *esig, REAL *emu, REAL *eerev, REAL *sw, REAL *ssig, REAL *smu,
                       REAL *serev) {
    for (int64_t e = 0; e < E; ++e) {
        int64_t idx = (int64_t)edges[e] * N + edges[E + e];
        ew[e] = p->w[idx];
        esig[e] = p->sigma[idx];
        emu[e] = p->mu[idx];
        eerev[e] = p->erev[idx];
    }
    for (int64_t e = 0; e < ES; ++e) {
        int64_t idx = (int64_t)sedges[e] * N + sedges[ES + e];
        sw[e] = p->sw[idx];
        ssig[e] = p->ssigma[idx];
        smu[e] = p->smu[idx];
        serev[e] = p->serev[idx];
    }
}

/* Sensory sums of one input step: snum/sden (N*B lanes); optionally keeps each sensory sigmoid (ES*B lanes). */
static void FN(sensory)(const REAL *x, const REAL *iw, const REAL *ib, int64_t t, int64_t T, int64_t S, int64_t B,
                        int64_t N, const int32_t *sedges, int64_t ES, const REAL *sw, const REAL *ssig,
                        const REAL *smu, const REAL *serev, REAL *restrict xl, REAL *restrict snum,
                        REAL *restrict sden, REAL *restrict sig_keep) {
    /* x is (B, T, S): transpose this step's inputs into lanes once, applying the optional input mapping
     * x * iw + ib (iw, ib may be NULL). */
    for (int64_t k = 0; k < S; ++k) {
        const REAL a = iw ? iw[k] : (REAL)1, c = ib ? ib[k] : (REAL)0;
        for (int64_t b = 0; b < B; ++b) xl[k * B + b] = x[(b * T + t) * S + k] * a + c;
    }
    for (int64_t i = 0; i < N * B; ++i) {
        snum[i] = 0;
        sden[i] = 0;
    }
    for (int64_t e = 0; e < ES; ++e) {
        const REAL *restrict xk = xl + (int64_t)sedges[e] * B;
        REAL *restrict nj = snum + (int64_t)sedges[ES + e] * B;
        REAL *restrict dj = sden + (int64_t)sedges[ES + e] * B;
        const REAL a = ssig[e], m = smu[e], wv = sw[e], er = serev[e];
        REAL *restrict keep = sig_keep ? sig_keep + e * B : NULL;
        for (int64_t b = 0; b < B; ++b) {
            REAL sg = SIGMOID(a * (xk[b] - m));
            REAL s = wv * sg;
            nj[b] += s * er;
            dj[b] += s;
            if (keep) keep[b] = sg;
        }
    }
}

/* dims: B, T, S, N, K, E, ES, M, dt_stride_b, dt_stride_t, starts_stride_b, starts_stride_t.
 * pp: gleak, vleak, cm, w, sigma, mu, erev, sw, ssigma, smu, serev, then (forward only, each may be NULL)
 * input_w (S), input_b (S), output_w (M), output_b (M).
 * edges: (2, E) int32 rows src, dst; sedges: (2, ES) int32 rows input index, dst.
 * x: (B, T, S) contiguous. h0: (B, N). dt[b * dims[8] + t * dims[9]] > 0 (strides 0 broadcast a scalar).
 * starts[b * dims[10] + t * dims[11]] (or NULL): 1 resets the state to zero before step t.
 *
 * Forward: states (B, T, N) out; y (B, T, M) out or NULL (readout output_w * v[:M] + output_b); vstore (T, K, N, B)
 * pre-unfold states kept for the backward pass, or NULL for inference. Returns 0, or 1 if out of memory. */
int FN(ltc_forward)(const int64_t *dims, const REAL *const *pp, const int32_t *edges, const int32_t *sedges,
                    const REAL *x, const REAL *h0, const REAL *dt, const REAL *starts, double eps, REAL *states,
                    REAL *y, REAL *vstore) {
    const int64_t B = dims[0], T = dims[1], S = dims[2], N = dims[3], K = dims[4], E = dims[5], ES = dims[6];
    const int64_t M = dims[7], dsb = dims[8], dst_ = dims[9], ssb = dims[10], sst = dims[11];
    const REAL *iw = pp[11], *ib = pp[12], *ow = pp[13], *ob = pp[14];
    const FN(params_t) p = {pp[0], pp[1], pp[2], pp[3], pp[4], pp[5], pp[6], pp[7], pp[8], pp[9], pp[10]};
    const int64_t NB = N * B;
    size_t n_scratch = (size_t)(4 * E + 4 * ES + S * B + 6 * NB + N * 2);
    REAL *buf = (REAL *)malloc(sizeof(REAL) * (n_scratch > 0 ? n_scratch : 1));
    if (!buf) return 1;
    REAL *ew = buf, *esig = ew + E, *emu = esig + E, *eerev = emu + E;
    REAL *sw = eerev + E, *ssig = sw + ES, *smu = ssig + ES, *serev = smu + ES;
    REAL *xl = serev + ES, *snum = xl + S * B, *sden = snum + NB, *v = sden + NB, *num = v + NB, *den = num + NB,
         *cmt = den + NB, *gvl = cmt + NB;
    FN(gather)(&p, edges, E, sedges, ES, N, ew, esig, emu, eerev, sw, ssig, smu, serev);
    for (int64_t j = 0; j < N; ++j) gvl[j] = p.gleak[j] * p.vleak[j];
    for (int64_t j = 0; j < N; ++j)
        for (int64_t b = 0; b < B; ++b) v[j * B + b] = h0[b * N + j];
    const REAL Kr = (REAL)K, epsr = (REAL)eps;

    for (int64_t t = 0; t < T; ++t) {
        if (starts) {
            for (int64_t j = 0; j < N; ++j)
                for (int64_t b = 0; b < B; ++b) v[j * B + b] *= (REAL)1 - starts[b * ssb + t * sst];
        }
        FN(sensory)(x, iw, ib, t, T, S, B, N, sedges, ES, sw, ssig, smu, serev, xl, snum, sden, NULL);
        for (int64_t j = 0; j < N; ++j) {
            REAL *restrict cj = cmt + j * B, *restrict sj = snum + j * B, *restrict dj = sden + j * B;
            for (int64_t b = 0; b < B; ++b) {
                /* cm / (dt / K), written as the reference writes it so the rounding matches */
                cj[b] = p.cm[j] / (dt[b * dsb + t * dst_] / Kr);
                sj[b] += gvl[j];
                dj[b] += cj[b] + p.gleak[j];
            }
        }
        for (int64_t u = 0; u < K; ++u) {
            if (vstore) memcpy(vstore + (t * K + u) * NB, v, sizeof(REAL) * NB);
            for (int64_t i = 0; i < NB; ++i) {
                num[i] = cmt[i] * v[i] + snum[i];
                den[i] = sden[i];
            }
            for (int64_t e = 0; e < E; ++e) {
                const REAL *restrict vi = v + (int64_t)edges[e] * B;
                REAL *restrict nj = num + (int64_t)edges[E + e] * B;
                REAL *restrict dj = den + (int64_t)edges[E + e] * B;
                const REAL a = esig[e], m = emu[e], wv = ew[e], er = eerev[e];
                for (int64_t b = 0; b < B; ++b) {
                    REAL s = wv * SIGMOID(a * (vi[b] - m));
                    nj[b] += s * er;
                    dj[b] += s;
                }
            }
            for (int64_t i = 0; i < NB; ++i) v[i] = num[i] / (den[i] + epsr);
        }
        for (int64_t b = 0; b < B; ++b)
            for (int64_t j = 0; j < N; ++j) states[(b * T + t) * N + j] = v[j * B + b];
        if (y) {
            for (int64_t b = 0; b < B; ++b)
                for (int64_t j = 0; j < M; ++j)
                    y[(b * T + t) * M + j] = v[j * B + b] * (ow ? ow[j] : (REAL)1) + (ob ? ob[j] : (REAL)0);
        }
    }
    free(buf);
    return 0;
}

/* Backward (BPTT through all unfolds and steps), same dims/pp/edges/x/dt/starts as the forward call that filled
 * states and vstore (without input mapping: x is the mapped input). gstates: (B, T, N) gradient of the loss w.r.t.
 * every state. Outputs: gx (B, T, S) and gh0 (B, N) are written fully; gdt (B, T) contiguous, zero-filled, or NULL;
 * gp holds the 11 dense parameter gradients (same order and shapes as pp, zero-filled by the caller): only the
 * synapse positions are written. Returns 0, or 1 if out of memory. */
int FN(ltc_backward)(const int64_t *dims, const REAL *const *pp, const int32_t *edges, const int32_t *sedges,
                     const REAL *x, const REAL *dt, const REAL *starts, double eps, const REAL *states,
                     const REAL *vstore, const REAL *gstates, REAL *gx, REAL *gh0, REAL *gdt, REAL *const *gp) {
    const int64_t B = dims[0], T = dims[1], S = dims[2], N = dims[3], K = dims[4], E = dims[5], ES = dims[6];
    const int64_t dsb = dims[8], dst_ = dims[9], ssb = dims[10], sst = dims[11];
    const FN(params_t) p = {pp[0], pp[1], pp[2], pp[3], pp[4], pp[5], pp[6], pp[7], pp[8], pp[9], pp[10]};
    const int64_t NB = N * B, EB = E * B, SB = ES * B;
    size_t n_scratch = (size_t)(4 * E + 4 * ES + S * B + 14 * NB + 5 * EB + SB + N);
    REAL *buf = (REAL *)malloc(sizeof(REAL) * (n_scratch > 0 ? n_scratch : 1));
    /* parameter gradients are summed over B*T*K terms: accumulate them in double */
    double *acc = (double *)calloc((size_t)(4 * E + 4 * ES + 3 * N + 1), sizeof(double));
    if (!buf || !acc) {
        free(buf);
        free(acc);
        return 1;
    }
    REAL *ew = buf, *esig = ew + E, *emu = esig + E, *eerev = emu + E;
    REAL *sw = eerev + E, *ssig = sw + ES, *smu = ssig + ES, *serev = smu + ES;
    REAL *xl = serev + ES, *snum = xl + S * B, *sden = snum + NB, *cmt = sden + NB, *den = cmt + NB, *gv = den + NB,
         *gvn = gv + NB, *gnum = gvn + NB, *gden = gnum + NB, *gsnum = gden + NB, *gsden = gsnum + NB,
         *gcmt = gsden + NB, *ggl = gcmt + NB;
    REAL *sig = ggl + NB;         /* (E, B) sigmoids of the current unfold */
    REAL *lw = sig + EB, *lsig = lw + EB, *lmu = lsig + EB, *lerev = lmu + EB; /* per-edge lane accumulators */
    REAL *ssg = lerev + EB; /* (ES, B) sensory sigmoids of the current step */
    REAL *gvlk = ssg + SB, *vlast = gvlk + NB; /* vlast: this step's output state in lanes */
    double *aw = acc, *asig = aw + E, *amu = asig + E, *aerev = amu + E;
    double *asw = aerev + E, *assig = asw + ES, *asmu = assig + ES, *aserev = asmu + ES;
    double *agl = aserev + ES, *avl = agl + N, *acm = avl + N;
    FN(gather)(&p, edges, E, sedges, ES, N, ew, esig, emu, eerev, sw, ssig, smu, serev);
    const REAL Kr = (REAL)K, epsr = (REAL)eps;
    REAL *gxt = (REAL *)malloc(sizeof(REAL) * (size_t)(S * B > 0 ? S * B : 1));
    if (!gxt) {
        free(buf);
        free(acc);
        return 1;
    }
    for (int64_t i = 0; i < NB; ++i) gv[i] = 0;

    for (int64_t t = T - 1; t >= 0; --t) {
        for (int64_t b = 0; b < B; ++b)
            for (int64_t j = 0; j < N; ++j) {
                gv[j * B + b] += gstates[(b * T + t) * N + j];
                vlast[j * B + b] = states[(b * T + t) * N + j];
            }
        FN(sensory)(x, NULL, NULL, t, T, S, B, N, sedges, ES, sw, ssig, smu, serev, xl, snum, sden, ssg);
        for (int64_t j = 0; j < N; ++j) {
            REAL *restrict cj = cmt + j * B, *restrict dj = sden + j * B;
            for (int64_t b = 0; b < B; ++b) {
                cj[b] = p.cm[j] / (dt[b * dsb + t * dst_] / Kr);
                dj[b] += cj[b] + p.gleak[j];
            }
        }
        for (int64_t i = 0; i < NB; ++i) {
            gsnum[i] = 0;
            gsden[i] = 0;
            gcmt[i] = 0;
            ggl[i] = 0;
            gvlk[i] = 0;
        }
        for (int64_t i = 0; i < EB; ++i) {
            lw[i] = 0;
            lsig[i] = 0;
            lmu[i] = 0;
            lerev[i] = 0;
        }
        for (int64_t u = K - 1; u >= 0; --u) {
            const REAL *v = vstore + (t * K + u) * NB;
            const REAL *vn = (u + 1 < K) ? vstore + (t * K + u + 1) * NB : vlast;
            /* recompute the denominator and the sigmoids of this unfold */
            memcpy(den, sden, sizeof(REAL) * NB);
            for (int64_t e = 0; e < E; ++e) {
                const REAL *restrict vi = v + (int64_t)edges[e] * B;
                REAL *restrict dj = den + (int64_t)edges[E + e] * B;
                REAL *restrict sg = sig + e * B;
                const REAL a = esig[e], m = emu[e], wv = ew[e];
                for (int64_t b = 0; b < B; ++b) {
                    sg[b] = SIGMOID(a * (vi[b] - m));
                    dj[b] += wv * sg[b];
                }
            }
            for (int64_t j = 0; j < N; ++j) {
                REAL *restrict gnj = gnum + j * B, *restrict gdj = gden + j * B, *restrict gvj = gv + j * B,
                               *restrict gvnj = gvn + j * B;
                const REAL *restrict dj = den + j * B, *restrict cj = cmt + j * B, *restrict vj = v + j * B,
                                     *restrict vnj = vn + j * B;
                for (int64_t b = 0; b < B; ++b) {
                    REAL vnext = vnj[b];
                    REAL g = gvj[b] / (dj[b] + epsr);
                    gnj[b] = g;
                    gdj[b] = -g * vnext;
                    gvnj[b] = g * cj[b];
                    gcmt[j * B + b] += g * vj[b] + gdj[b];
                    ggl[j * B + b] += gdj[b];
                    gvlk[j * B + b] += g;
                    gsnum[j * B + b] += g;
                    gsden[j * B + b] += gdj[b];
                }
            }
            for (int64_t e = 0; e < E; ++e) {
                const int64_t i = edges[e], j = edges[E + e];
                const REAL *restrict vi = v + i * B, *restrict gnj = gnum + j * B, *restrict gdj = gden + j * B;
                const REAL *restrict sg = sig + e * B;
                REAL *restrict gvi = gvn + i * B;
                REAL *restrict aw_ = lw + e * B, *restrict as_ = lsig + e * B, *restrict am_ = lmu + e * B,
                               *restrict ae_ = lerev + e * B;
                const REAL a = esig[e], m = emu[e], wv = ew[e], er = eerev[e];
                for (int64_t b = 0; b < B; ++b) {
                    REAL s = wv * sg[b];
                    REAL gs = gnj[b] * er + gdj[b];
                    ae_[b] += gnj[b] * s;
                    aw_[b] += gs * sg[b];
                    REAL ds = gs * wv * sg[b] * ((REAL)1 - sg[b]);
                    as_[b] += ds * (vi[b] - m);
                    am_[b] -= ds * a;
                    gvi[b] += ds * a;
                }
            }
            REAL *tmp = gv;
            gv = gvn;
            gvn = tmp;
        }
        /* sensory synapses (held over the K unfolds: their gradient is the sum over unfolds) */
        for (int64_t i = 0; i < S * B; ++i) gxt[i] = 0;
        for (int64_t e = 0; e < ES; ++e) {
            const int64_t k = sedges[e], j = sedges[ES + e];
            const REAL *restrict xk = xl + k * B, *restrict gnj = gsnum + j * B, *restrict gdj = gsden + j * B;
            const REAL *restrict sg = ssg + e * B;
            REAL *restrict gxk = gxt + k * B;
            const REAL a = ssig[e], m = smu[e], wv = sw[e], er = serev[e];
            double s_w = 0, s_sig = 0, s_mu = 0, s_erev = 0;
            for (int64_t b = 0; b < B; ++b) {
                REAL s = wv * sg[b];
                REAL gs = gnj[b] * er + gdj[b];
                REAL ds = gs * wv * sg[b] * ((REAL)1 - sg[b]);
                s_erev += gnj[b] * s;
                s_w += gs * sg[b];
                s_sig += ds * (xk[b] - m);
                s_mu -= ds * a;
                gxk[b] += ds * a;
            }
            aserev[e] += s_erev;
            asw[e] += s_w;
            assig[e] += s_sig;
            asmu[e] += s_mu;
        }
        for (int64_t k = 0; k < S; ++k)
            for (int64_t b = 0; b < B; ++b) gx[(b * T + t) * S + k] = gxt[k * B + b];
        for (int64_t e = 0; e < E; ++e) {
            double s_w = 0, s_sig = 0, s_mu = 0, s_erev = 0;
            for (int64_t b = 0; b < B; ++b) {
                s_w += lw[e * B + b];
                s_sig += lsig[e * B + b];
                s_mu += lmu[e * B + b];
                s_erev += lerev[e * B + b];
            }
            aw[e] += s_w;
            asig[e] += s_sig;
            amu[e] += s_mu;
            aerev[e] += s_erev;
        }
        for (int64_t j = 0; j < N; ++j) {
            double s_gl = 0, s_vl = 0, s_cm = 0;
            for (int64_t b = 0; b < B; ++b) {
                const int64_t i = j * B + b;
                const REAL h = dt[b * dsb + t * dst_] / Kr;
                /* num has gleak*vleak, den has gleak: d/dgleak = gnum*vleak + gden; d/dvleak = gnum*gleak */
                s_gl += gvlk[i] * p.vleak[j] + ggl[i];
                s_vl += gvlk[i] * p.gleak[j];
                s_cm += gcmt[i] / h;
                if (gdt) gdt[b * T + t] += -gcmt[i] * p.cm[j] / (h * h) / Kr;
            }
            agl[j] += s_gl;
            avl[j] += s_vl;
            acm[j] += s_cm;
        }
        if (starts) {
            for (int64_t j = 0; j < N; ++j)
                for (int64_t b = 0; b < B; ++b) gv[j * B + b] *= (REAL)1 - starts[b * ssb + t * sst];
        }
    }
    for (int64_t j = 0; j < N; ++j)
        for (int64_t b = 0; b < B; ++b) gh0[b * N + j] = gv[j * B + b];
    for (int64_t j = 0; j < N; ++j) {
        gp[0][j] = (REAL)agl[j];
        gp[1][j] = (REAL)avl[j];
        gp[2][j] = (REAL)acm[j];
    }
    for (int64_t e = 0; e < E; ++e) {
        int64_t idx = (int64_t)edges[e] * N + edges[E + e];
        gp[3][idx] = (REAL)aw[e];
        gp[4][idx] = (REAL)asig[e];
        gp[5][idx] = (REAL)amu[e];
        gp[6][idx] = (REAL)aerev[e];
    }
    for (int64_t e = 0; e < ES; ++e) {
        int64_t idx = (int64_t)sedges[e] * N + sedges[ES + e];
        gp[7][idx] = (REAL)asw[e];
        gp[8][idx] = (REAL)assig[e];
        gp[9][idx] = (REAL)asmu[e];
        gp[10][idx] = (REAL)aserev[e];
    }
    free(gxt);
    free(buf);
    free(acc);
    return 0;
}
