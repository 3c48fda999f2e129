/* Body of the fused LTC sequence kernel, included twice by ltc_kernel.c (REAL/V = float, then double).
 *
 * The batch is cut into chunks of L lanes (one vector V). A chunk runs the whole sequence with neuron-major lane
 * vectors v[j]; each synapse of the sparse edge list costs a few vector instructions per unfold, so the cost grows
 * with the number of synapses, not with N^2. A last partial chunk replicates its last valid sample into the unused
 * lanes (finite values; their results and gradients are discarded).
 *
 * Equations (h = dt / K, K unfolds per input step, sensory terms held over the K unfolds):
 *   s_sens[k->j] = sw * sigmoid(ssigma * (x[k] - smu));  snum_j = sum s_sens * serev;  sden_j = sum s_sens
 *   repeat K times:
 *     s[i->j] = w * sigmoid(sigma * (v_i - mu))
 *     v_j = (cm_j/h * v_j + gleak_j * vleak_j + sum s * erev + snum_j) / (cm_j/h + gleak_j + sum s + sden_j + eps)
 * Parameters arrive already constrained (softplus applied by the caller); the gradients returned are with respect
 * to those constrained values, and autograd chains through the constraint.
 *
 * Common arguments:
 * dims: B, T, S, N, K, E, ES, M, dt_stride_b, dt_stride_t, starts_stride_b, starts_stride_t, chunk_begin, chunk_end,
 *   check_finite (chunks of L samples; [chunk_begin, chunk_end) lets several threads share one call's work;
 *   check_finite = 1 makes the forward return 2, computing nothing, if x holds a NaN or an infinity, and 3 if a
 *   dt it reads is not finite and > 0).
 * pp: gleak, vleak, cm (N); w, sigma, mu, erev (N, N); sw, ssigma, smu, serev (S, N); then (forward only, each may
 *   be NULL) input_w (S), input_b (S), output_w (M), output_b (M).
 * edges: (2, E) int32 rows src, dst; sedges: (2, ES) int32 rows input index, dst.
 * x: (B, T, S) contiguous; h0: (B, N) contiguous; dt[b * dims[8] + t * dims[9]] > 0 (strides 0 broadcast);
 * starts[b * dims[10] + t * dims[11]] or NULL: 1 resets the state to zero before step t.
 */

typedef struct {
    const REAL *gleak, *vleak, *cm;        /* (N) */
    const REAL *w, *sigma, *mu, *erev;     /* (N, N) dense, read at the edges only */
    const REAL *sw, *ssigma, *smu, *serev; /* (S, N) dense, read at the sensory edges only */
} FN(params_t);

typedef struct {
    int64_t B, T, S, N, K, E, ES, M, dsb, dst, ssb, sst, c0, c1, check_finite;
} FN(dims_t);

/* Scalar per-synapse parameters (gathered once per call) followed by the vector scratch of one call. */
typedef struct {
    REAL *ew, *esig, *emu, *eerev, *sw, *ssig, *smu, *serev, *gvl;
    void *scalar_block, *vector_block;
} FN(scratch_t);

static FN(dims_t) FN(read_dims)(const int64_t *d) {
    FN(dims_t) r = {d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7], d[8], d[9], d[10], d[11], d[12], d[13], d[14]};
    return r;
}

static int FN(scratch_init)(FN(scratch_t) * s, const FN(params_t) * p, const FN(dims_t) * d, const int32_t *edges,
                            const int32_t *sedges, size_t n_vectors) {
    const int64_t E = d->E, ES = d->ES, N = d->N;
    s->scalar_block = malloc(sizeof(REAL) * (size_t)(4 * E + 4 * ES + N + 1));
    s->vector_block = NULL;
    if (posix_memalign(&s->vector_block, VEC_ALIGN, sizeof(V) * (n_vectors + 1)) != 0) s->vector_block = NULL;
    if (!s->scalar_block || !s->vector_block) {
        free(s->scalar_block);
        free(s->vector_block);
        return 1;
    }
    REAL *b = (REAL *)s->scalar_block;
    s->ew = b;
    s->esig = s->ew + E;
    s->emu = s->esig + E;
    s->eerev = s->emu + E;
    s->sw = s->eerev + E;
    s->ssig = s->sw + ES;
    s->smu = s->ssig + ES;
    s->serev = s->smu + ES;
    s->gvl = s->serev + ES;
    for (int64_t e = 0; e < E; ++e) {
        int64_t idx = (int64_t)edges[e] * N + edges[E + e];
        s->ew[e] = p->w[idx];
        s->esig[e] = p->sigma[idx];
        s->emu[e] = p->mu[idx];
        s->eerev[e] = p->erev[idx];
    }
    for (int64_t e = 0; e < ES; ++e) {
        int64_t idx = (int64_t)sedges[e] * N + sedges[ES + e];
        s->sw[e] = p->sw[idx];
        s->ssig[e] = p->ssigma[idx];
        s->smu[e] = p->smu[idx];
        s->serev[e] = p->serev[idx];
    }
    for (int64_t j = 0; j < N; ++j) s->gvl[j] = p->gleak[j] * p->vleak[j];
    return 0;
}

static void FN(scratch_free)(FN(scratch_t) * s) {
    free(s->scalar_block);
    free(s->vector_block);
}

/* Sample index of lane l of chunk c (the last valid sample for padding lanes). */
static inline int64_t FN(lane_sample)(int64_t c, int64_t l, int64_t B) {
    int64_t b = c * L + l;
    return b < B ? b : B - 1;
}

/* Sensory sums of one step for one chunk into snum/sden (N vectors); keeps each sensory sigmoid (ES vectors) in
 * sig_keep when it is not NULL. iw/ib (may be NULL) apply the input mapping x * iw + ib. */
static void FN(sensory)(const FN(dims_t) * d, const FN(scratch_t) * sc, const REAL *x, const REAL *iw,
                        const REAL *ib, int64_t c, int64_t t, const int32_t *sedges, V *xl, V *snum, V *sden,
                        V *sig_keep) {
    const int64_t S = d->S, ES = d->ES;
    for (int64_t l = 0; l < L; ++l) {
        const REAL *xr = x + (FN(lane_sample)(c, l, d->B) * d->T + t) * S;
        for (int64_t k = 0; k < S; ++k) xl[k][l] = xr[k] * (iw ? iw[k] : (REAL)1) + (ib ? ib[k] : (REAL)0);
    }
    for (int64_t j = 0; j < d->N; ++j) {
        snum[j] = (V){0};
        sden[j] = (V){0};
    }
    for (int64_t e = 0; e < ES; ++e) {
        const int64_t k = sedges[e], j = sedges[ES + e];
        V sg = VSIGMOID(sc->ssig[e] * (xl[k] - sc->smu[e]));
        V s = sc->sw[e] * sg;
        snum[j] += s * sc->serev[e];
        sden[j] += s;
        if (sig_keep) sig_keep[e] = sg;
    }
}

/* Batch-1 inference (no vstore): here the batch gives no lanes to vectorise over, so the synapses do. Each block
 * of L synapses gathers its presynaptic values into one vector, evaluates L sigmoids at once and scatters them
 * to their postsynaptic neurons in order (the same summation order as the batched path). Padding synapses have
 * zero weight. */
static int FN(forward_b1)(const FN(dims_t) * d, const FN(params_t) * p, const int32_t *edges, const int32_t *sedges,
                          const REAL *x, const REAL *h0, const REAL *dt, const REAL *starts, double eps,
                          REAL *states, REAL *y, const REAL *iw, const REAL *ib, const REAL *ow, const REAL *ob) {
    const int64_t T = d->T, S = d->S, N = d->N, K = d->K, E = d->E, ES = d->ES, M = d->M;
    const int64_t Ep = (E + L - 1) / L * L, ESp = (ES + L - 1) / L * L;
    /* per synapse: w, sigma, mu, erev (REAL), then src, dst (int32) after the REAL arrays */
    const size_t n = (size_t)(4 * Ep + 4 * ESp + 6 * N + S + L);
    void *block = NULL;
    if (posix_memalign(&block, VEC_ALIGN, sizeof(REAL) * n + sizeof(int32_t) * (size_t)(2 * Ep + 2 * ESp)) != 0)
        return 1;
    REAL *ew = (REAL *)block, *esig = ew + Ep, *emu = esig + Ep, *eerev = emu + Ep;
    REAL *sw = eerev + Ep, *ssig = sw + ESp, *smu = ssig + ESp, *serev = smu + ESp;
    REAL *v = serev + ESp, *num = v + N, *den = num + N, *snum = den + N, *sden = snum + N, *cmt = sden + N,
         *xl = cmt + N;
    int32_t *esrc = (int32_t *)(xl + S + L), *edst = esrc + Ep, *ssrc = edst + Ep, *sdst = ssrc + ESp;
    for (int64_t e = 0; e < Ep; ++e) {
        const int valid = e < E;
        const int64_t idx = valid ? (int64_t)edges[e] * N + edges[E + e] : 0;
        ew[e] = valid ? p->w[idx] : (REAL)0;
        esig[e] = valid ? p->sigma[idx] : (REAL)0;
        emu[e] = valid ? p->mu[idx] : (REAL)0;
        eerev[e] = valid ? p->erev[idx] : (REAL)0;
        esrc[e] = valid ? edges[e] : 0;
        edst[e] = valid ? edges[E + e] : 0;
    }
    for (int64_t e = 0; e < ESp; ++e) {
        const int valid = e < ES;
        const int64_t idx = valid ? (int64_t)sedges[e] * N + sedges[ES + e] : 0;
        sw[e] = valid ? p->sw[idx] : (REAL)0;
        ssig[e] = valid ? p->ssigma[idx] : (REAL)0;
        smu[e] = valid ? p->smu[idx] : (REAL)0;
        serev[e] = valid ? p->serev[idx] : (REAL)0;
        ssrc[e] = valid ? sedges[e] : 0;
        sdst[e] = valid ? sedges[ES + e] : 0;
    }
    for (int64_t j = 0; j < N; ++j) v[j] = h0[j];
    const REAL Kr = (REAL)K, epsr = (REAL)eps;
    for (int64_t t = 0; t < T; ++t) {
        if (starts) {
            const REAL keep = (REAL)1 - starts[t * d->sst];
            for (int64_t j = 0; j < N; ++j) v[j] *= keep;
        }
        for (int64_t k = 0; k < S; ++k) xl[k] = x[t * S + k] * (iw ? iw[k] : (REAL)1) + (ib ? ib[k] : (REAL)0);
        for (int64_t j = 0; j < N; ++j) snum[j] = sden[j] = 0;
        for (int64_t e = 0; e < ESp; e += L) {
            V xs;
            for (int64_t l = 0; l < L; ++l) xs[l] = xl[ssrc[e + l]];
            const V s = *(const V *)(sw + e) * VSIGMOID(*(const V *)(ssig + e) * (xs - *(const V *)(smu + e)));
            const V sn = s * *(const V *)(serev + e);
            for (int64_t l = 0; l < L; ++l) {
                snum[sdst[e + l]] += sn[l];
                sden[sdst[e + l]] += s[l];
            }
        }
        const REAL h = dt[t * d->dst] / Kr;
        for (int64_t j = 0; j < N; ++j) {
            cmt[j] = p->cm[j] / h;
            snum[j] += p->gleak[j] * p->vleak[j];
            sden[j] += cmt[j] + p->gleak[j];
        }
        for (int64_t u = 0; u < K; ++u) {
            for (int64_t j = 0; j < N; ++j) {
                num[j] = cmt[j] * v[j] + snum[j];
                den[j] = sden[j];
            }
            for (int64_t e = 0; e < Ep; e += L) {
                V vs;
                for (int64_t l = 0; l < L; ++l) vs[l] = v[esrc[e + l]];
                const V s = *(const V *)(ew + e) * VSIGMOID(*(const V *)(esig + e) * (vs - *(const V *)(emu + e)));
                const V sn = s * *(const V *)(eerev + e);
                for (int64_t l = 0; l < L; ++l) {
                    num[edst[e + l]] += sn[l];
                    den[edst[e + l]] += s[l];
                }
            }
            for (int64_t j = 0; j < N; ++j) v[j] = num[j] / (den[j] + epsr);
        }
        for (int64_t j = 0; j < N; ++j) states[t * N + j] = v[j];
        if (y)
            for (int64_t j = 0; j < M; ++j) y[t * M + j] = v[j] * (ow ? ow[j] : (REAL)1) + (ob ? ob[j] : (REAL)0);
    }
    free(block);
    return 0;
}

/* Forward. states: (B, T, N) out; y: (B, T, M) out or NULL (readout output_w * v[:M] + output_b); vstore:
 * (chunks, T, K, N, L) pre-unfold states kept for the backward pass, or NULL for inference.
 * Returns 0; 1 if out of memory; with check_finite set, 2 if x is not finite and 3 if dt is not finite and > 0. */
int FN(ltc_forward)(const int64_t *dims, const REAL *const *pp, const int32_t *edges, const int32_t *sedges,
                    const REAL *x, const REAL *h0, const REAL *dt, const REAL *starts, double eps, REAL *states,
                    REAL *y, REAL *vstore) {
    const FN(dims_t) d = FN(read_dims)(dims);
    const int64_t B = d.B, T = d.T, S = d.S, N = d.N, K = d.K, E = d.E, M = d.M;
    const FN(params_t) p = {pp[0], pp[1], pp[2], pp[3], pp[4], pp[5], pp[6], pp[7], pp[8], pp[9], pp[10]};
    const REAL *iw = pp[11], *ib = pp[12], *ow = pp[13], *ob = pp[14];
    if (d.check_finite) {
        for (int64_t i = 0; i < B * T * S; ++i)
            if (!isfinite(x[i])) return 2;
        for (int64_t b = 0; b < B; ++b)
            for (int64_t t = 0; t < T; ++t) {
                const REAL h = dt[b * d.dsb + t * d.dst];
                if (!(h > 0) || !isfinite(h)) return 3;
            }
    }
    if (B == 1 && !vstore && d.c0 == 0 && d.c1 == 1)
        return FN(forward_b1)(&d, &p, edges, sedges, x, h0, dt, starts, eps, states, y, iw, ib, ow, ob);
    FN(scratch_t) sc;
    if (FN(scratch_init)(&sc, &p, &d, edges, sedges, (size_t)(S + 6 * N))) return 1;
    V *xl = (V *)sc.vector_block, *snum = xl + S, *sden = snum + N, *v = sden + N, *num = v + N, *den = num + N,
      *cmt = den + N;
    const REAL Kr = (REAL)K, epsr = (REAL)eps;

    for (int64_t c = d.c0; c < d.c1; ++c) {
        for (int64_t l = 0; l < L; ++l) {
            const int64_t b = FN(lane_sample)(c, l, B);
            for (int64_t j = 0; j < N; ++j) v[j][l] = h0[b * N + j];
        }
        for (int64_t t = 0; t < T; ++t) {
            if (starts) {
                V keep;
                for (int64_t l = 0; l < L; ++l) keep[l] = (REAL)1 - starts[FN(lane_sample)(c, l, B) * d.ssb + t * d.sst];
                for (int64_t j = 0; j < N; ++j) v[j] *= keep;
            }
            FN(sensory)(&d, &sc, x, iw, ib, c, t, sedges, xl, snum, sden, NULL);
            V h;
            for (int64_t l = 0; l < L; ++l) h[l] = dt[FN(lane_sample)(c, l, B) * d.dsb + t * d.dst] / Kr;
            for (int64_t j = 0; j < N; ++j) {
                /* cm / (dt / K), written as the reference writes it so the rounding matches */
                cmt[j] = p.cm[j] / h;
                snum[j] += sc.gvl[j];
                sden[j] += cmt[j] + p.gleak[j];
            }
            for (int64_t u = 0; u < K; ++u) {
                if (vstore) memcpy(vstore + ((c * T + t) * K + u) * N * L, v, sizeof(V) * (size_t)N);
                for (int64_t j = 0; j < N; ++j) {
                    num[j] = cmt[j] * v[j] + snum[j];
                    den[j] = sden[j];
                }
                for (int64_t e = 0; e < E; ++e) {
                    const int64_t i = edges[e], j = edges[E + e];
                    V s = sc.ew[e] * VSIGMOID(sc.esig[e] * (v[i] - sc.emu[e]));
                    num[j] += s * sc.eerev[e];
                    den[j] += s;
                }
                for (int64_t j = 0; j < N; ++j) v[j] = num[j] / (den[j] + epsr);
            }
            for (int64_t l = 0; l < L && c * L + l < B; ++l) {
                const int64_t b = c * L + l;
                for (int64_t j = 0; j < N; ++j) states[(b * T + t) * N + j] = v[j][l];
                if (y)
                    for (int64_t j = 0; j < M; ++j)
                        y[(b * T + t) * M + j] = v[j][l] * (ow ? ow[j] : (REAL)1) + (ob ? ob[j] : (REAL)0);
            }
        }
    }
    FN(scratch_free)(&sc);
    return 0;
}

/* Backward (BPTT through all unfolds and steps), same dims/pp/edges/x/dt/starts as the forward call that filled
 * states and vstore (without input mapping: x is the mapped input). gstates: (B, T, N) gradient of the loss w.r.t.
 * every state. Outputs: gx (B, T, S) and gh0 (B, N) are written for the samples of the chunk range; gdt (B, T)
 * contiguous, zero-filled, or NULL; gp holds the 11 dense parameter gradients (same order and shapes as pp,
 * zero-filled by the caller): the synapse positions get this call's contribution added.
 * Returns 0, or 1 if out of memory. */
int FN(ltc_backward)(const int64_t *dims, const REAL *const *pp, const int32_t *edges, const int32_t *sedges,
                     const REAL *x, const REAL *dt, const REAL *starts, double eps, const REAL *states,
                     const REAL *vstore, const REAL *gstates, REAL *gx, REAL *gh0, REAL *gdt, REAL *const *gp) {
    const FN(dims_t) d = FN(read_dims)(dims);
    const int64_t B = d.B, T = d.T, S = d.S, N = d.N, K = d.K, E = d.E, ES = d.ES;
    const FN(params_t) p = {pp[0], pp[1], pp[2], pp[3], pp[4], pp[5], pp[6], pp[7], pp[8], pp[9], pp[10]};
    FN(scratch_t) sc;
    if (FN(scratch_init)(&sc, &p, &d, edges, sedges, (size_t)(2 * S + 13 * N + 5 * E + ES))) return 1;
    /* parameter gradients are sums over B * T * K terms: accumulate them in double */
    double *acc = (double *)calloc((size_t)(4 * E + 4 * ES + 3 * N + 1), sizeof(double));
    if (!acc) {
        FN(scratch_free)(&sc);
        return 1;
    }
    V *xl = (V *)sc.vector_block, *gxt = xl + S;
    V *snum = gxt + S, *sden = snum + N, *cmt = sden + N, *den = cmt + N, *gv = den + N, *gvn = gv + N,
      *gnum = gvn + N, *gden = gnum + N, *gsnum = gden + N, *gsden = gsnum + N, *gcmt = gsden + N,
      *vcur = gcmt + N, *vlast = vcur + N;
    V *sig = vlast + N;                                                   /* (E) sigmoids of the current unfold */
    V *lw = sig + E, *lsig = lw + E, *lmu = lsig + E, *lerev = lmu + E; /* per-edge lane accumulators */
    V *ssg = lerev + E;                                                   /* (ES) sensory sigmoids */
    double *aw = acc, *asig = aw + E, *amu = asig + E, *aerev = amu + E;
    double *asw = aerev + E, *assig = asw + ES, *asmu = assig + ES, *aserev = asmu + ES;
    double *agl = aserev + ES, *avl = agl + N, *acm = avl + N;
    const REAL Kr = (REAL)K, epsr = (REAL)eps;
    const size_t vbytes = sizeof(V) * (size_t)N;

    for (int64_t c = d.c0; c < d.c1; ++c) {
        const int64_t nvalid = (B - c * L) < L ? (B - c * L) : L;
        for (int64_t j = 0; j < N; ++j) gv[j] = (V){0};
        for (int64_t t = T - 1; t >= 0; --t) {
            V h;
            for (int64_t l = 0; l < L; ++l) {
                const int64_t bs = FN(lane_sample)(c, l, B);
                for (int64_t j = 0; j < N; ++j) {
                    /* padding lanes carry no gradient */
                    if (l < nvalid) gv[j][l] += gstates[(bs * T + t) * N + j];
                    vlast[j][l] = states[(bs * T + t) * N + j];
                }
                h[l] = dt[bs * d.dsb + t * d.dst] / Kr;
            }
            FN(sensory)(&d, &sc, x, NULL, NULL, c, t, sedges, xl, snum, sden, ssg);
            for (int64_t j = 0; j < N; ++j) {
                cmt[j] = p.cm[j] / h;
                sden[j] += cmt[j] + p.gleak[j];
                gsnum[j] = (V){0};
                gsden[j] = (V){0};
                gcmt[j] = (V){0};
            }
            for (int64_t e = 0; e < E; ++e) {
                lw[e] = (V){0};
                lsig[e] = (V){0};
                lmu[e] = (V){0};
                lerev[e] = (V){0};
            }
            for (int64_t u = K - 1; u >= 0; --u) {
                const REAL *vsrc = vstore + ((c * T + t) * K + u) * N * L;
                /* the state after this unfold: the next stored one, or the step's output for the last unfold */
                const V *vn = (u + 1 < K) ? NULL : vlast;
                memcpy(vcur, vsrc, vbytes);
                /* recompute the denominator and the sigmoids of this unfold */
                for (int64_t j = 0; j < N; ++j) den[j] = sden[j];
                for (int64_t e = 0; e < E; ++e) {
                    const int64_t i = edges[e], j = edges[E + e];
                    sig[e] = VSIGMOID(sc.esig[e] * (vcur[i] - sc.emu[e]));
                    den[j] += sc.ew[e] * sig[e];
                }
                for (int64_t j = 0; j < N; ++j) {
                    V vnext;
                    if (vn)
                        vnext = vn[j];
                    else
                        memcpy(&vnext, vsrc + (N + j) * L, sizeof(V));
                    V g = gv[j] / (den[j] + epsr);
                    V gd = -g * vnext;
                    gnum[j] = g;
                    gden[j] = gd;
                    gvn[j] = g * cmt[j];
                    gcmt[j] += g * vcur[j] + gd;
                    gsnum[j] += g; /* also the gradient of the num's gleak * vleak term */
                    gsden[j] += gd; /* also the gradient of the den's gleak term */
                }
                for (int64_t e = 0; e < E; ++e) {
                    const int64_t i = edges[e], j = edges[E + e];
                    const REAL a = sc.esig[e], wv = sc.ew[e];
                    const V sg = sig[e];
                    const V gs = gnum[j] * sc.eerev[e] + gden[j];
                    lerev[e] += gnum[j] * (wv * sg);
                    lw[e] += gs * sg;
                    const V ds = gs * wv * sg * ((REAL)1 - sg);
                    lsig[e] += ds * (vcur[i] - sc.emu[e]);
                    lmu[e] -= ds * a;
                    gvn[i] += ds * a;
                }
                V *tmp = gv;
                gv = gvn;
                gvn = tmp;
            }
            /* sensory synapses (held over the K unfolds: their gradient is the sum over unfolds) */
            for (int64_t k = 0; k < S; ++k) gxt[k] = (V){0};
            for (int64_t e = 0; e < ES; ++e) {
                const int64_t k = sedges[e], j = sedges[ES + e];
                const REAL a = sc.ssig[e], wv = sc.sw[e];
                const V sg = ssg[e];
                const V gs = gsnum[j] * sc.serev[e] + gsden[j];
                const V ds = gs * wv * sg * ((REAL)1 - sg);
                const V l_erev = gsnum[j] * (wv * sg), l_w = gs * sg, l_sig = ds * (xl[k] - sc.smu[e]),
                        l_mu = -ds * a;
                gxt[k] += ds * a;
                double s_w = 0, s_sig = 0, s_mu = 0, s_erev = 0;
                for (int64_t l = 0; l < nvalid; ++l) {
                    s_w += l_w[l];
                    s_sig += l_sig[l];
                    s_mu += l_mu[l];
                    s_erev += l_erev[l];
                }
                aserev[e] += s_erev;
                asw[e] += s_w;
                assig[e] += s_sig;
                asmu[e] += s_mu;
            }
            for (int64_t l = 0; l < nvalid; ++l) {
                const int64_t b = c * L + l;
                for (int64_t k = 0; k < S; ++k) gx[(b * T + t) * S + k] = gxt[k][l];
            }
            for (int64_t e = 0; e < E; ++e) {
                double s_w = 0, s_sig = 0, s_mu = 0, s_erev = 0;
                for (int64_t l = 0; l < nvalid; ++l) {
                    s_w += lw[e][l];
                    s_sig += lsig[e][l];
                    s_mu += lmu[e][l];
                    s_erev += lerev[e][l];
                }
                aw[e] += s_w;
                asig[e] += s_sig;
                amu[e] += s_mu;
                aerev[e] += s_erev;
            }
            for (int64_t j = 0; j < N; ++j) {
                double s_gl = 0, s_vl = 0, s_cm = 0;
                for (int64_t l = 0; l < nvalid; ++l) {
                    const int64_t b = c * L + l;
                    /* num has gleak*vleak, den has gleak: d/dgleak = gnum*vleak + gden; d/dvleak = gnum*gleak */
                    s_gl += gsnum[j][l] * p.vleak[j] + gsden[j][l];
                    s_vl += gsnum[j][l] * p.gleak[j];
                    s_cm += gcmt[j][l] / h[l];
                    if (gdt) gdt[b * T + t] += -gcmt[j][l] * p.cm[j] / (h[l] * h[l]) / Kr;
                }
                agl[j] += s_gl;
                avl[j] += s_vl;
                acm[j] += s_cm;
            }
            if (starts) {
                V keep;
                for (int64_t l = 0; l < L; ++l) keep[l] = (REAL)1 - starts[FN(lane_sample)(c, l, B) * d.ssb + t * d.sst];
                for (int64_t j = 0; j < N; ++j) gv[j] *= keep;
            }
        }
        for (int64_t l = 0; l < nvalid; ++l) {
            const int64_t b = c * L + l;
            for (int64_t j = 0; j < N; ++j) gh0[b * N + j] = gv[j][l];
        }
    }
    for (int64_t j = 0; j < N; ++j) {
        gp[0][j] += (REAL)agl[j];
        gp[1][j] += (REAL)avl[j];
        gp[2][j] += (REAL)acm[j];
    }
    for (int64_t e = 0; e < E; ++e) {
        int64_t idx = (int64_t)edges[e] * N + edges[E + e];
        gp[3][idx] += (REAL)aw[e];
        gp[4][idx] += (REAL)asig[e];
        gp[5][idx] += (REAL)amu[e];
        gp[6][idx] += (REAL)aerev[e];
    }
    for (int64_t e = 0; e < ES; ++e) {
        int64_t idx = (int64_t)sedges[e] * N + sedges[ES + e];
        gp[7][idx] += (REAL)asw[e];
        gp[8][idx] += (REAL)assig[e];
        gp[9][idx] += (REAL)asmu[e];
        gp[10][idx] += (REAL)aserev[e];
    }
    free(acc);
    FN(scratch_free)(&sc);
    return 0;
}

/* The forward with its pointer arguments packed in one array (a: pp, edges, sedges, x, h0, dt, starts, states, y,
 * vstore): one ctypes argument instead of twelve, for the microsecond budget of a control step. */
int FN(ltc_forward_packed)(const int64_t *dims, void *const *a, double eps) {
    return FN(ltc_forward)(dims, (const REAL *const *)a[0], (const int32_t *)a[1], (const int32_t *)a[2],
                           (const REAL *)a[3], (const REAL *)a[4], (const REAL *)a[5], (const REAL *)a[6], eps,
                           (REAL *)a[7], (REAL *)a[8], (REAL *)a[9]);
}
