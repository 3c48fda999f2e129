/* Body of the fused LTC sequence kernel, included twice by ltc_kernel.c (REAL/V = float, then double).
 *
 * The batch is cut into chunks of L lanes (one vector V). A chunk runs the whole sequence with neuron-major lane
 * vectors v[j]; each synapse of the sparse edge list costs a few vector instructions per unfold, so the cost grows
 * with the number of synapses, not with N^2. A last partial chunk replicates its last valid sample into the unused
 * lanes (finite values; their results and gradients are discarded). Batches up to the small-batch limit instead
 * run sample by sample, vectorised over synapses (forward_small / backward_small below).
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

/* Small batches (B <= the small-batch limit, one chunk): the batch gives too few lanes to vectorise over, so
 * the synapses do, one sample after another. Each block of L synapses gathers its presynaptic values into one
 * vector, evaluates L sigmoids at once and scatters them to their postsynaptic neurons in order (the summation
 * order of the batched path, so the states are the same). Padding synapses have zero weight and zero slope. */
typedef struct {
    int64_t Ep, ESp;
    REAL *ew, *esig, *emu, *eerev, *sw, *ssig, *smu, *serev; /* (Ep) / (ESp), L-aligned */
    int32_t *esrc, *edst, *ssrc, *sdst;
    REAL *work; /* n_work REALs after the synapse arrays, L-aligned */
    void *block;
} FN(syn_t);

/* Gathers the padded per-synapse arrays and allocates n_work REALs of scratch after them (starting L-aligned).
 * Returns 0, or 1 if out of memory. */
static int FN(syn_init)(FN(syn_t) * y, const FN(dims_t) * d, const FN(params_t) * p, const int32_t *edges,
                        const int32_t *sedges, size_t n_work) {
    const int64_t E = d->E, ES = d->ES, N = d->N;
    const int64_t Ep = (E + L - 1) / L * L, ESp = (ES + L - 1) / L * L;
    const size_t nreal = (size_t)(4 * Ep + 4 * ESp) + (n_work + L - 1) / L * L;
    y->block = NULL;
    if (posix_memalign(&y->block, VEC_ALIGN, sizeof(REAL) * nreal + sizeof(int32_t) * (size_t)(2 * Ep + 2 * ESp)) !=
        0)
        return 1;
    y->Ep = Ep;
    y->ESp = ESp;
    y->ew = (REAL *)y->block;
    y->esig = y->ew + Ep;
    y->emu = y->esig + Ep;
    y->eerev = y->emu + Ep;
    y->sw = y->eerev + Ep;
    y->ssig = y->sw + ESp;
    y->smu = y->ssig + ESp;
    y->serev = y->smu + ESp;
    y->work = y->serev + ESp;
    y->esrc = (int32_t *)((REAL *)y->block + nreal);
    y->edst = y->esrc + Ep;
    y->ssrc = y->edst + Ep;
    y->sdst = y->ssrc + ESp;
    for (int64_t e = 0; e < Ep; ++e) {
        const int valid = e < E;
        const int64_t idx = valid ? (int64_t)edges[e] * N + edges[E + e] : 0;
        y->ew[e] = valid ? p->w[idx] : (REAL)0;
        y->esig[e] = valid ? p->sigma[idx] : (REAL)0;
        y->emu[e] = valid ? p->mu[idx] : (REAL)0;
        y->eerev[e] = valid ? p->erev[idx] : (REAL)0;
        y->esrc[e] = valid ? edges[e] : 0;
        y->edst[e] = valid ? edges[E + e] : 0;
    }
    for (int64_t e = 0; e < ESp; ++e) {
        const int valid = e < ES;
        const int64_t idx = valid ? (int64_t)sedges[e] * N + sedges[ES + e] : 0;
        y->sw[e] = valid ? p->sw[idx] : (REAL)0;
        y->ssig[e] = valid ? p->ssigma[idx] : (REAL)0;
        y->smu[e] = valid ? p->smu[idx] : (REAL)0;
        y->serev[e] = valid ? p->serev[idx] : (REAL)0;
        y->ssrc[e] = valid ? sedges[e] : 0;
        y->sdst[e] = valid ? sedges[ES + e] : 0;
    }
    return 0;
}

/* Sensory sums of one step of one sample (xl: its S mapped inputs) into snum/sden (N); keeps each sensory
 * sigmoid in sig_keep (ESp, L-aligned) when it is not NULL. */
static void FN(sensory_small)(const FN(dims_t) * d, const FN(syn_t) * y, const REAL *xl, REAL *snum, REAL *sden,
                              REAL *sig_keep) {
    for (int64_t j = 0; j < d->N; ++j) snum[j] = sden[j] = 0;
    for (int64_t e = 0; e < y->ESp; e += L) {
        V xs;
        for (int64_t l = 0; l < L; ++l) xs[l] = xl[y->ssrc[e + l]];
        const V sg = VSIGMOID(*(const V *)(y->ssig + e) * (xs - *(const V *)(y->smu + e)));
        const V s = *(const V *)(y->sw + e) * sg;
        const V sn = s * *(const V *)(y->serev + e);
        for (int64_t l = 0; l < L; ++l) {
            snum[y->sdst[e + l]] += sn[l];
            sden[y->sdst[e + l]] += s[l];
        }
        if (sig_keep) *(V *)(sig_keep + e) = sg;
    }
}

/* Forward of a small batch, sample by sample; vstore (or NULL) is laid out and filled as the batched path
 * fills it (sample b in lane b of chunk 0, padding lanes copies of the last sample), so either backward path can
 * follow either forward path. */
static int FN(forward_small)(const FN(dims_t) * d, const FN(params_t) * p, const int32_t *edges,
                             const int32_t *sedges, const REAL *x, const REAL *h0, const REAL *dt, const REAL *starts,
                             double eps, REAL *states, REAL *y, REAL *vstore, const REAL *iw, const REAL *ib,
                             const REAL *ow, const REAL *ob) {
    const int64_t B = d->B, T = d->T, S = d->S, N = d->N, K = d->K, M = d->M;
    FN(syn_t) sy;
    if (FN(syn_init)(&sy, d, p, edges, sedges, (size_t)(6 * N + S + L))) return 1;
    REAL *v = sy.work, *num = v + N, *den = num + N, *snum = den + N, *sden = snum + N, *cmt = sden + N,
         *xl = cmt + N;
    const REAL Kr = (REAL)K, epsr = (REAL)eps;
    for (int64_t b = 0; b < B; ++b) {
        for (int64_t j = 0; j < N; ++j) v[j] = h0[b * N + j];
        for (int64_t t = 0; t < T; ++t) {
            if (starts) {
                const REAL keep = (REAL)1 - starts[b * d->ssb + t * d->sst];
                for (int64_t j = 0; j < N; ++j) v[j] *= keep;
            }
            const REAL *xr = x + (b * T + t) * S;
            for (int64_t k = 0; k < S; ++k) xl[k] = xr[k] * (iw ? iw[k] : (REAL)1) + (ib ? ib[k] : (REAL)0);
            FN(sensory_small)(d, &sy, xl, snum, sden, NULL);
            /* cm / (dt / K), written as the reference writes it so the rounding matches */
            const REAL h = dt[b * d->dsb + t * d->dst] / Kr;
            for (int64_t j = 0; j < N; ++j) {
                cmt[j] = p->cm[j] / h;
                snum[j] += p->gleak[j] * p->vleak[j];
                sden[j] += cmt[j] + p->gleak[j];
            }
            for (int64_t u = 0; u < K; ++u) {
                if (vstore) {
                    REAL *vs = vstore + (t * K + u) * N * L + b;
                    for (int64_t j = 0; j < N; ++j) vs[j * L] = v[j];
                }
                for (int64_t j = 0; j < N; ++j) {
                    num[j] = cmt[j] * v[j] + snum[j];
                    den[j] = sden[j];
                }
                for (int64_t e = 0; e < sy.Ep; e += L) {
                    V vs;
                    for (int64_t l = 0; l < L; ++l) vs[l] = v[sy.esrc[e + l]];
                    const V s = *(const V *)(sy.ew + e) *
                                VSIGMOID(*(const V *)(sy.esig + e) * (vs - *(const V *)(sy.emu + e)));
                    const V sn = s * *(const V *)(sy.eerev + e);
                    for (int64_t l = 0; l < L; ++l) {
                        num[sy.edst[e + l]] += sn[l];
                        den[sy.edst[e + l]] += s[l];
                    }
                }
                for (int64_t j = 0; j < N; ++j) v[j] = num[j] / (den[j] + epsr);
            }
            REAL *st = states + (b * T + t) * N;
            for (int64_t j = 0; j < N; ++j) st[j] = v[j];
            if (y) {
                REAL *yr = y + (b * T + t) * M;
                for (int64_t j = 0; j < M; ++j) yr[j] = v[j] * (ow ? ow[j] : (REAL)1) + (ob ? ob[j] : (REAL)0);
            }
        }
    }
    if (vstore && B > 0 && B < L) {
        /* padding lanes replicate the last sample, as the batched path fills them: either backward can follow */
        for (int64_t r = 0; r < T * K * N; ++r)
            for (int64_t l = B; l < L; ++l) vstore[r * L + l] = vstore[r * L + B - 1];
    }
    free(sy.block);
    return 0;
}

/* Adds the double-precision parameter-gradient sums acc (aw, asig, amu, aerev per edge; asw, assig, asmu, aserev
 * per sensory edge; agl, avl, acm per neuron) to the dense gradients gp at their synapse positions. */
static void FN(add_param_grads)(const FN(dims_t) * d, const int32_t *edges, const int32_t *sedges,
                                const double *acc, REAL *const *gp) {
    const int64_t N = d->N, E = d->E, ES = d->ES;
    const double *aw = acc, *asig = aw + E, *amu = asig + E, *aerev = amu + E;
    const double *asw = aerev + E, *assig = asw + ES, *asmu = assig + ES, *aserev = asmu + ES;
    const double *agl = aserev + ES, *avl = agl + N, *acm = avl + N;
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
}

/* Backward of a small batch (the forward ran forward_small with vstore), sample by sample; arguments as
 * ltc_backward's. */
static int FN(backward_small)(const FN(dims_t) * d, const FN(params_t) * p, const int32_t *edges,
                              const int32_t *sedges, const REAL *x, const REAL *dt, const REAL *starts, double eps,
                              const REAL *states, const REAL *vstore, const REAL *gstates, REAL *gx, REAL *gh0,
                              REAL *gdt, REAL *const *gp) {
    const int64_t B = d->B, T = d->T, S = d->S, N = d->N, K = d->K, E = d->E, ES = d->ES;
    const int64_t Ep = (E + L - 1) / L * L, ESp = (ES + L - 1) / L * L;
    FN(syn_t) sy;
    /* L-aligned first: sig, lw, lsig, lmu, lerev (Ep each), ssg (ESp); then 14 N-vectors and 2 S-vectors */
    if (FN(syn_init)(&sy, d, p, edges, sedges, (size_t)(5 * Ep + ESp + 14 * N + 2 * S))) return 1;
    double *acc = (double *)calloc((size_t)(4 * E + 4 * ES + 3 * N + 1), sizeof(double));
    if (!acc) {
        free(sy.block);
        return 1;
    }
    REAL *sig = sy.work, *lw = sig + Ep, *lsig = lw + Ep, *lmu = lsig + Ep, *lerev = lmu + Ep, *ssg = lerev + Ep;
    REAL *gv = ssg + ESp, *gvn = gv + N, *vcur = gvn + N, *vnext = vcur + N, *vlast = vnext + N, *den = vlast + N,
         *cmt = den + N, *snum = cmt + N, *sden = snum + N, *gnum = sden + N, *gden = gnum + N, *gsnum = gden + N,
         *gsden = gsnum + N, *gcmt = gsden + N, *xl = gcmt + N, *gxt = xl + S;
    double *aw = acc, *asig = aw + E, *amu = asig + E, *aerev = amu + E;
    double *asw = aerev + E, *assig = asw + ES, *asmu = assig + ES, *aserev = asmu + ES;
    double *agl = aserev + ES, *avl = agl + N, *acm = avl + N;
    const REAL Kr = (REAL)K, epsr = (REAL)eps;

    for (int64_t b = 0; b < B; ++b) {
        for (int64_t j = 0; j < N; ++j) gv[j] = 0;
        for (int64_t t = T - 1; t >= 0; --t) {
            const REAL *gs_t = gstates + (b * T + t) * N, *st = states + (b * T + t) * N;
            for (int64_t j = 0; j < N; ++j) {
                gv[j] += gs_t[j];
                vlast[j] = st[j];
            }
            const REAL h = dt[b * d->dsb + t * d->dst] / Kr;
            const REAL *xr = x + (b * T + t) * S;
            for (int64_t k = 0; k < S; ++k) xl[k] = xr[k];
            FN(sensory_small)(d, &sy, xl, snum, sden, ssg);
            for (int64_t j = 0; j < N; ++j) {
                cmt[j] = p->cm[j] / h;
                sden[j] += cmt[j] + p->gleak[j];
                gsnum[j] = gsden[j] = gcmt[j] = 0;
            }
            for (int64_t e = 0; e < Ep; ++e) lw[e] = lsig[e] = lmu[e] = lerev[e] = 0;
            for (int64_t u = K - 1; u >= 0; --u) {
                const REAL *vsrc = vstore + (t * K + u) * N * L + b;
                for (int64_t j = 0; j < N; ++j) {
                    vcur[j] = vsrc[j * L];
                    /* the state after this unfold: the next stored one, or the step's output for the last */
                    vnext[j] = (u + 1 < K) ? vsrc[(N + j) * L] : vlast[j];
                    den[j] = sden[j];
                }
                /* recompute the denominator and the sigmoids of this unfold */
                for (int64_t e = 0; e < Ep; e += L) {
                    V vs;
                    for (int64_t l = 0; l < L; ++l) vs[l] = vcur[sy.esrc[e + l]];
                    const V sg = VSIGMOID(*(const V *)(sy.esig + e) * (vs - *(const V *)(sy.emu + e)));
                    *(V *)(sig + e) = sg;
                    const V s = *(const V *)(sy.ew + e) * sg;
                    for (int64_t l = 0; l < L; ++l) den[sy.edst[e + l]] += s[l];
                }
                for (int64_t j = 0; j < N; ++j) {
                    const REAL g = gv[j] / (den[j] + epsr), gd = -g * vnext[j];
                    gnum[j] = g;
                    gden[j] = gd;
                    gvn[j] = g * cmt[j];
                    gcmt[j] += g * vcur[j] + gd;
                    gsnum[j] += g;  /* also the gradient of the num's gleak * vleak term */
                    gsden[j] += gd; /* also the gradient of the den's gleak term */
                }
                for (int64_t e = 0; e < Ep; e += L) {
                    V gn, gdn, vs;
                    for (int64_t l = 0; l < L; ++l) {
                        gn[l] = gnum[sy.edst[e + l]];
                        gdn[l] = gden[sy.edst[e + l]];
                        vs[l] = vcur[sy.esrc[e + l]];
                    }
                    const V a = *(const V *)(sy.esig + e), wv = *(const V *)(sy.ew + e);
                    const V sg = *(const V *)(sig + e);
                    const V gs = gn * *(const V *)(sy.eerev + e) + gdn;
                    *(V *)(lerev + e) += gn * (wv * sg);
                    *(V *)(lw + e) += gs * sg;
                    const V ds = gs * wv * sg * ((REAL)1 - sg);
                    *(V *)(lsig + e) += ds * (vs - *(const V *)(sy.emu + e));
                    *(V *)(lmu + e) -= ds * a;
                    const V gi = ds * a;
                    for (int64_t l = 0; l < L; ++l) gvn[sy.esrc[e + l]] += gi[l];
                }
                REAL *tmp = gv;
                gv = gvn;
                gvn = tmp;
            }
            /* sensory synapses (held over the K unfolds: their gradient is the sum over unfolds) */
            for (int64_t k = 0; k < S; ++k) gxt[k] = 0;
            for (int64_t e = 0; e < ESp; e += L) {
                V gsn, gsd, xs;
                for (int64_t l = 0; l < L; ++l) {
                    gsn[l] = gsnum[sy.sdst[e + l]];
                    gsd[l] = gsden[sy.sdst[e + l]];
                    xs[l] = xl[sy.ssrc[e + l]];
                }
                const V a = *(const V *)(sy.ssig + e), wv = *(const V *)(sy.sw + e);
                const V sg = *(const V *)(ssg + e);
                const V gs = gsn * *(const V *)(sy.serev + e) + gsd;
                const V ds = gs * wv * sg * ((REAL)1 - sg);
                const V l_erev = gsn * (wv * sg), l_w = gs * sg, l_sig = ds * (xs - *(const V *)(sy.smu + e)),
                        l_mu = -ds * a, gi = ds * a;
                for (int64_t l = 0; l < L && e + l < ES; ++l) {
                    gxt[sy.ssrc[e + l]] += gi[l];
                    aserev[e + l] += l_erev[l];
                    asw[e + l] += l_w[l];
                    assig[e + l] += l_sig[l];
                    asmu[e + l] += l_mu[l];
                }
            }
            REAL *gxr = gx + (b * T + t) * S;
            for (int64_t k = 0; k < S; ++k) gxr[k] = gxt[k];
            for (int64_t e = 0; e < E; ++e) {
                aw[e] += lw[e];
                asig[e] += lsig[e];
                amu[e] += lmu[e];
                aerev[e] += lerev[e];
            }
            for (int64_t j = 0; j < N; ++j) {
                /* num has gleak*vleak, den has gleak: d/dgleak = gnum*vleak + gden; d/dvleak = gnum*gleak */
                agl[j] += gsnum[j] * p->vleak[j] + gsden[j];
                avl[j] += gsnum[j] * p->gleak[j];
                acm[j] += gcmt[j] / h;
                if (gdt) gdt[b * T + t] += -gcmt[j] * p->cm[j] / (h * h) / Kr;
            }
            if (starts) {
                const REAL keep = (REAL)1 - starts[b * d->ssb + t * d->sst];
                for (int64_t j = 0; j < N; ++j) gv[j] *= keep;
            }
        }
        for (int64_t j = 0; j < N; ++j) gh0[b * N + j] = gv[j];
    }
    FN(add_param_grads)(d, edges, sedges, acc, gp);
    free(acc);
    free(sy.block);
    return 0;
}

/* Whether a call takes the sample-by-sample path: the whole batch in one call, at most the small-batch limit. */
static inline int FN(use_small)(const FN(dims_t) * d) {
    return d->B <= FN(small_batch_limit) && d->c0 == 0 && d->c1 == (d->B + L - 1) / L;
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
    if (FN(use_small)(&d))
        return FN(forward_small)(&d, &p, edges, sedges, x, h0, dt, starts, eps, states, y, vstore, iw, ib, ow, ob);
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
    if (FN(use_small)(&d))
        return FN(backward_small)(&d, &p, edges, sedges, x, dt, starts, eps, states, vstore, gstates, gx, gh0, gdt,
                                  gp);
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
    FN(add_param_grads)(&d, edges, sedges, acc, gp);
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
