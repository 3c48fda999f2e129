/* Fused LTC kernels for CUDA (forward + hand-written BPTT backward) over a sparse synapse list, float and double.
 *
 * Compiled at run time with NVRTC (ltc_control/cells/ltc_cuda.py), so it needs no nvcc, no host compiler and no
 * headers: only the CUDA build of PyTorch, which ships NVRTC. The same source is also compiled as C++20 on the CPU by
 * the tests, with real threads and a barrier standing in for a thread block (the LTC_* macros below), so its logic
 * is checked on machines without a GPU.
 *
 * Parallel layout: one thread block per sample, one thread per neuron (strided when N exceeds the block). The whole
 * sequence (T steps x K unfolds) runs inside one launch, so a training batch costs two launches instead of the
 * tens of thousands of tiny kernels of a per-op implementation. Synapses arrive sorted by their postsynaptic
 * neuron (CSR: rowptr), so thread j sums its own incoming synapses in a fixed order with no atomics; the backward
 * pass scatters the presynaptic gradient through a second index sorted by the presynaptic neuron (outptr/outidx),
 * again in a fixed order: results are deterministic run to run.
 *
 * Equations (h = dt / K; the sensory terms are held over the K unfolds of a step):
 *   s_sens[k->j] = sw * sigmoid(ssig * (x[k] - smu));   snum_j = sum s_sens * serev + gleak_j * vleak_j
 *   sden_j = sum s_sens + cm_j / h + gleak_j
 *   repeat K times: s[i->j] = w * sigmoid(sig * (v_i - mu));
 *                   v_j = (cm_j / h * v_j + snum_j + sum s * erev) / (sden_j + sum s + eps)
 *
 * Arguments common to both kernels (ints are C int, as NVRTC launchers pass Python ints):
 *   B, T, S, N, K, dsb, dst, ssb, sst (element strides of dt / starts over (B, T); 0 broadcasts), has_starts;
 *   gleak, vleak, cm (N); per-synapse ew, esig, emu, eerev, esrc (E, sorted by dst) and rowptr (N + 1);
 *   per-sensory-synapse sw, ssig, smu, serev, ssrc (ES, sorted by dst) and srowptr (N + 1);
 *   x (B, T, S) mapped inputs; dt; starts (1 zeroes the state before step t; ignored unless has_starts).
 * Dynamic shared memory: forward (5 N + S) reals; backward (9 N + S) reals rounded up to a multiple of 8 bytes, plus,
 * when acc_shared is set, the block's parameter-gradient accumulators (4 E + 4 ES + 3 N doubles), which are then
 * flushed to the global per-sample buffers once at the end instead of being updated in global memory at every unfold.
 */

#ifndef LTC_EMULATED
#define LTC_TID ((int)threadIdx.x)
#define LTC_NT ((int)blockDim.x)
#define LTC_BID ((long long)blockIdx.x)
#define LTC_SYNC() __syncthreads()
#define LTC_DEVICE __device__ __forceinline__
/* at most 256 threads a block (ltc_cuda.py caps it): the backward kernel needs ~130 registers a thread */
#define LTC_KERNEL extern "C" __global__ __launch_bounds__(256)
#define LTC_SHARED_DECL extern __shared__ double ltc_smem_[];
#define LTC_SMEM ((void *)ltc_smem_)
#endif

LTC_DEVICE float ltc_sigmoid(float z) { return 1.0f / (1.0f + expf(-z)); }
LTC_DEVICE double ltc_sigmoid(double z) { return 1.0 / (1.0 + exp(-z)); }

/* Scratch of a block: in shared memory (ebuf_shared) or the block's slice of a global buffer of `per_block` reals. */
template <typename R>
LTC_DEVICE R *ltc_edge_buffer(int ebuf_shared, R *shared_part, R *global_buf, long long per_block, long long b) {
    return ebuf_shared ? shared_part : global_buf + b * per_block;
}

/* Forward. ebuf: 2 * max(E, ES) reals per block (shared when ebuf_shared, else the block's slice of the global
 * buffer). Synapse phases run one thread per synapse, neuron phases one thread per neuron. */
template <typename R>
LTC_DEVICE void ltc_forward_block(int B, int T, int S, int N, int K, int E, int ES, int dsb, int dst, int ssb,
                                  int sst, int has_starts, int keep_vstore, int ebuf_shared, double eps,
                                  const R *__restrict__ gleak, const R *__restrict__ vleak, const R *__restrict__ cm,
                                  const R *__restrict__ ew, const R *__restrict__ esig, const R *__restrict__ emu,
                                  const R *__restrict__ eerev, const int *__restrict__ esrc,
                                  const int *__restrict__ rowptr, const R *__restrict__ sw,
                                  const R *__restrict__ ssig, const R *__restrict__ smu, const R *__restrict__ serev,
                                  const int *__restrict__ ssrc, const int *__restrict__ srowptr,
                                  const R *__restrict__ x, const R *__restrict__ h0, const R *__restrict__ dt,
                                  const R *__restrict__ starts, R *__restrict__ states, R *__restrict__ vstore,
                                  R *__restrict__ ebuf_global, R *smem) {
    const long long b = LTC_BID;
    if (b >= B) return;
    const int tid = LTC_TID, nt = LTC_NT;
    const int M = E > ES ? E : ES;
    R *v = smem, *vnew = v + N, *snum = vnew + N, *sden = snum + N, *cmt = sden + N, *xs = cmt + N;
    R *ebuf = ltc_edge_buffer<R>(ebuf_shared, xs + S, ebuf_global, 2LL * M, b);
    R *sb = ebuf, *snb = ebuf + M; /* per-synapse s and s * erev */
    const R Kr = (R)K, epsr = (R)eps;
    for (int j = tid; j < N; j += nt) v[j] = h0[b * N + j];
    for (int t = 0; t < T; ++t) {
        const R keep = has_starts ? (R)1 - starts[b * ssb + (long long)t * sst] : (R)1;
        const R h = dt[b * dsb + (long long)t * dst] / Kr;
        for (int k = tid; k < S; k += nt) xs[k] = x[(b * T + t) * S + k];
        for (int j = tid; j < N; j += nt) v[j] *= keep;
        LTC_SYNC();
        for (int e = tid; e < ES; e += nt) {
            const R s = sw[e] * ltc_sigmoid(ssig[e] * (xs[ssrc[e]] - smu[e]));
            sb[e] = s;
            snb[e] = s * serev[e];
        }
        LTC_SYNC();
        for (int j = tid; j < N; j += nt) {
            R sn = 0, sd = 0;
            for (int e = srowptr[j]; e < srowptr[j + 1]; ++e) {
                sn += snb[e];
                sd += sb[e];
            }
            /* cm / (dt / K), written as the reference writes it so the rounding matches */
            cmt[j] = cm[j] / h;
            snum[j] = sn + gleak[j] * vleak[j];
            sden[j] = sd + (cmt[j] + gleak[j]);
        }
        for (int u = 0; u < K; ++u) {
            LTC_SYNC(); /* v final for this unfold; the previous readers of sb / snb are done */
            for (int e = tid; e < E; e += nt) {
                const R s = ew[e] * ltc_sigmoid(esig[e] * (v[esrc[e]] - emu[e]));
                sb[e] = s;
                snb[e] = s * eerev[e];
            }
            LTC_SYNC();
            for (int j = tid; j < N; j += nt) {
                if (keep_vstore) vstore[((b * T + t) * K + u) * N + j] = v[j];
                R num = cmt[j] * v[j] + snum[j], den = sden[j];
                for (int e = rowptr[j]; e < rowptr[j + 1]; ++e) {
                    num += snb[e];
                    den += sb[e];
                }
                vnew[j] = num / (den + epsr);
            }
            LTC_SYNC();
            for (int j = tid; j < N; j += nt) v[j] = vnew[j];
        }
        for (int j = tid; j < N; j += nt) states[(b * T + t) * N + j] = v[j];
        LTC_SYNC(); /* xs and v are rewritten at the next step */
    }
}

/* Backward (BPTT through every unfold and step) of the forward call that filled states and vstore.
 * gstates (B, T, N): gradient of the loss with respect to every state. Outputs: gx (B, T, S), gh0 (B, N), gdt (B, T)
 * (written when has_gdt), and per-sample parameter gradients in double: ge (B, 4, E) for ew, esig, emu, eerev;
 * gs (B, 4, ES) for sw, ssig, smu, serev; gn (B, 3, N) for gleak, vleak, cm (zero-filled by the caller). Every
 * accumulator has one owner thread (a synapse's or a neuron's). edst / sdst: the postsynaptic neuron of each synapse
 * (kernel order); outptr (N + 1) / outidx (E): the synapses out of each neuron (indices into the kernel order);
 * soutptr (S + 1) / soutidx (ES) likewise for the inputs. ebuf: 3 * max(E, ES) reals per block. */
template <typename R>
LTC_DEVICE void ltc_backward_block(
    int B, int T, int S, int N, int K, int E, int ES, int dsb, int dst, int ssb, int sst, int has_starts, int has_gdt,
    int ebuf_shared, int acc_shared, double eps, const R *__restrict__ gleak, const R *__restrict__ vleak,
    const R *__restrict__ cm, const R *__restrict__ ew, const R *__restrict__ esig, const R *__restrict__ emu,
    const R *__restrict__ eerev, const int *__restrict__ esrc, const int *__restrict__ edst,
    const int *__restrict__ rowptr, const int *__restrict__ outptr, const int *__restrict__ outidx,
    const R *__restrict__ sw, const R *__restrict__ ssig, const R *__restrict__ smu, const R *__restrict__ serev,
    const int *__restrict__ ssrc, const int *__restrict__ sdst, const int *__restrict__ srowptr,
    const int *__restrict__ soutptr, const int *__restrict__ soutidx, const R *__restrict__ x,
    const R *__restrict__ dt, const R *__restrict__ starts, const R *__restrict__ states,
    const R *__restrict__ vstore, const R *__restrict__ gstates, R *__restrict__ gx, R *__restrict__ gh0,
    R *__restrict__ gdt, double *__restrict__ ge, double *__restrict__ gsn, double *__restrict__ gn,
    R *__restrict__ ebuf_global, R *smem) {
    const long long b = LTC_BID;
    if (b >= B) return;
    const int tid = LTC_TID, nt = LTC_NT;
    const int M = E > ES ? E : ES;
    R *vcur = smem, *gv = vcur + N, *gvn = gv + N, *cmt = gvn + N, *sden = cmt + N, *gsnum = sden + N,
      *gsden = gsnum + N, *gcmt = gsden + N, *red = gcmt + N, *gb = red + N, *gdb = gb + N, *xs = gdb + N;
    const long long reals = 11LL * N + S + (ebuf_shared ? 3LL * M : 0);
    R *ebuf = ltc_edge_buffer<R>(ebuf_shared, xs + S, ebuf_global, 3LL * M, b);
    R *bufa = ebuf, *bufb = ebuf + M, *bufc = ebuf + 2 * M;
    double *ge_b = ge + b * 4 * E, *gs_b = gsn + b * 4 * ES, *gn_b = gn + b * 3 * N;
    const long long nacc = 4LL * E + 4LL * ES + 3LL * N;
    /* accumulators: in shared memory after the reals (8-byte aligned) or directly in the global buffers */
    double *acc = acc_shared ? (double *)smem + reals * (long long)sizeof(R) / 8 + 1 : (double *)0;
    if (acc_shared)
        for (long long i = tid; i < nacc; i += nt) acc[i] = 0;
    double *aw = acc_shared ? acc : ge_b, *asig = aw + E, *amu = asig + E, *aerev = amu + E;
    double *asw = acc_shared ? aerev + E : gs_b, *assig = asw + ES, *asmu = assig + ES, *aserev = asmu + ES;
    double *agl = acc_shared ? aserev + ES : gn_b, *avl = agl + N, *acm = avl + N;
    const R Kr = (R)K, epsr = (R)eps;
    for (int j = tid; j < N; j += nt) gv[j] = 0;
    for (int t = T - 1; t >= 0; --t) {
        const R h = dt[b * dsb + (long long)t * dst] / Kr;
        for (int k = tid; k < S; k += nt) xs[k] = x[(b * T + t) * S + k];
        for (int j = tid; j < N; j += nt) {
            gv[j] += gstates[(b * T + t) * N + j];
            gsnum[j] = 0;
            gsden[j] = 0;
            gcmt[j] = 0;
        }
        LTC_SYNC();
        for (int e = tid; e < ES; e += nt) bufa[e] = sw[e] * ltc_sigmoid(ssig[e] * (xs[ssrc[e]] - smu[e]));
        LTC_SYNC();
        for (int j = tid; j < N; j += nt) {
            R sd = 0;
            for (int e = srowptr[j]; e < srowptr[j + 1]; ++e) sd += bufa[e];
            cmt[j] = cm[j] / h;
            sden[j] = sd + (cmt[j] + gleak[j]);
        }
        for (int u = K - 1; u >= 0; --u) {
            const R *vsrc = vstore + ((b * T + t) * K + u) * N;
            const R *vnext = (u + 1 < K) ? vsrc + N : states + (b * T + t) * N;
            for (int j = tid; j < N; j += nt) vcur[j] = vsrc[j];
            LTC_SYNC();
            /* bufa: sigmoid of each synapse, bufb: w * sigmoid */
            for (int e = tid; e < E; e += nt) {
                const R sg = ltc_sigmoid(esig[e] * (vcur[esrc[e]] - emu[e]));
                bufa[e] = sg;
                bufb[e] = ew[e] * sg;
            }
            LTC_SYNC();
            for (int j = tid; j < N; j += nt) {
                R den = sden[j];
                for (int e = rowptr[j]; e < rowptr[j + 1]; ++e) den += bufb[e];
                const R g = gv[j] / (den + epsr);
                const R gd = -g * vnext[j];
                gcmt[j] += g * vcur[j] + gd;
                gsnum[j] += g; /* also the gradient of the num's gleak * vleak term */
                gsden[j] += gd; /* also the gradient of the den's gleak term */
                gvn[j] = g * cmt[j];
                gb[j] = g;
                gdb[j] = gd;
            }
            LTC_SYNC();
            /* bufc: each synapse's gradient contribution to its presynaptic state */
            for (int e = tid; e < E; e += nt) {
                const int j = edst[e];
                const R g = gb[j], gd = gdb[j];
                const R a = esig[e], wv = ew[e], dv = vcur[esrc[e]] - emu[e], sg = bufa[e];
                const R gs = g * eerev[e] + gd;
                const R ds = gs * wv * sg * ((R)1 - sg);
                aerev[e] += (double)(g * (wv * sg));
                aw[e] += (double)(gs * sg);
                asig[e] += (double)(ds * dv);
                amu[e] -= (double)(ds * a);
                bufc[e] = ds * a;
            }
            LTC_SYNC();
            for (int i = tid; i < N; i += nt) {
                R acc = gvn[i];
                for (int q = outptr[i]; q < outptr[i + 1]; ++q) acc += bufc[outidx[q]];
                gv[i] = acc;
            }
            LTC_SYNC();
        }
        /* sensory synapses: held over the K unfolds, so their gradient is the sum over unfolds */
        for (int e = tid; e < ES; e += nt) {
            const int j = sdst[e];
            const R gnum = gsnum[j], gden = gsden[j];
            const R a = ssig[e], wv = sw[e], dv = xs[ssrc[e]] - smu[e];
            const R sg = ltc_sigmoid(a * dv);
            const R gs = gnum * serev[e] + gden;
            const R ds = gs * wv * sg * ((R)1 - sg);
            aserev[e] += (double)(gnum * (wv * sg));
            asw[e] += (double)(gs * sg);
            assig[e] += (double)(ds * dv);
            asmu[e] -= (double)(ds * a);
            bufc[e] = ds * a;
        }
        for (int j = tid; j < N; j += nt) {
            const R gnum = gsnum[j], gden = gsden[j];
            /* num has gleak * vleak, den has gleak: d/dgleak = gnum * vleak + gden, d/dvleak = gnum * gleak */
            agl[j] += (double)(gnum * vleak[j] + gden);
            avl[j] += (double)(gnum * gleak[j]);
            acm[j] += (double)(gcmt[j] / h);
            red[j] = -gcmt[j] * cm[j] / (h * h) / Kr;
        }
        LTC_SYNC();
        for (int k = tid; k < S; k += nt) {
            R acc = 0;
            for (int q = soutptr[k]; q < soutptr[k + 1]; ++q) acc += bufc[soutidx[q]];
            gx[(b * T + t) * S + k] = acc;
        }
        if (has_gdt && tid == 0) {
            R acc = 0;
            for (int j = 0; j < N; ++j) acc += red[j];
            gdt[b * T + t] = acc;
        }
        if (has_starts) {
            const R keep = (R)1 - starts[b * ssb + (long long)t * sst];
            for (int j = tid; j < N; j += nt) gv[j] *= keep;
        }
        LTC_SYNC();
    }
    for (int j = tid; j < N; j += nt) gh0[b * N + j] = gv[j];
    if (acc_shared) {
        /* after the last barrier every accumulator is final: any thread may copy any of them */
        for (long long i = tid; i < 4LL * E; i += nt) ge_b[i] = acc[i];
        for (long long i = tid; i < 4LL * ES; i += nt) gs_b[i] = acc[4LL * E + i];
        for (long long i = tid; i < 3LL * N; i += nt) gn_b[i] = acc[4LL * E + 4LL * ES + i];
    }
}

#define LTC_FORWARD_KERNEL(NAME, R)                                                                                  \
    LTC_KERNEL void NAME(int B, int T, int S, int N, int K, int E, int ES, int dsb, int dst, int ssb, int sst,      \
                         int has_starts, int keep_vstore, int ebuf_shared, double eps, const R *gleak,              \
                         const R *vleak, const R *cm, const R *ew, const R *esig, const R *emu, const R *eerev,     \
                         const int *esrc, const int *rowptr, const R *sw, const R *ssig, const R *smu,              \
                         const R *serev, const int *ssrc, const int *srowptr, const R *x, const R *h0,              \
                         const R *dt, const R *starts, R *states, R *vstore, R *ebuf) {                             \
        LTC_SHARED_DECL                                                                                             \
        ltc_forward_block<R>(B, T, S, N, K, E, ES, dsb, dst, ssb, sst, has_starts, keep_vstore, ebuf_shared, eps,   \
                             gleak, vleak, cm, ew, esig, emu, eerev, esrc, rowptr, sw, ssig, smu, serev, ssrc,      \
                             srowptr, x, h0, dt, starts, states, vstore, ebuf, (R *)LTC_SMEM);                      \
    }

#define LTC_BACKWARD_KERNEL(NAME, R)                                                                                 \
    LTC_KERNEL void NAME(int B, int T, int S, int N, int K, int E, int ES, int dsb, int dst, int ssb, int sst,      \
                         int has_starts, int has_gdt, int ebuf_shared, int acc_shared, double eps, const R *gleak,  \
                         const R *vleak, const R *cm, const R *ew, const R *esig, const R *emu, const R *eerev,     \
                         const int *esrc, const int *edst, const int *rowptr, const int *outptr,                    \
                         const int *outidx, const R *sw, const R *ssig, const R *smu, const R *serev,               \
                         const int *ssrc, const int *sdst, const int *srowptr, const int *soutptr,                  \
                         const int *soutidx, const R *x, const R *dt, const R *starts, const R *states,             \
                         const R *vstore, const R *gstates, R *gx, R *gh0, R *gdt, double *ge, double *gsn,         \
                         double *gn, R *ebuf) {                                                                     \
        LTC_SHARED_DECL                                                                                             \
        ltc_backward_block<R>(B, T, S, N, K, E, ES, dsb, dst, ssb, sst, has_starts, has_gdt, ebuf_shared,           \
                              acc_shared, eps, gleak, vleak, cm, ew, esig, emu, eerev, esrc, edst, rowptr, outptr,  \
                              outidx, sw, ssig, smu, serev, ssrc, sdst, srowptr, soutptr, soutidx, x, dt, starts,   \
                              states, vstore, gstates, gx, gh0, gdt, ge, gsn, gn, ebuf, (R *)LTC_SMEM);             \
    }

LTC_FORWARD_KERNEL(ltc_cuda_forward_f32, float)
LTC_FORWARD_KERNEL(ltc_cuda_forward_f64, double)
LTC_BACKWARD_KERNEL(ltc_cuda_backward_f32, float)
LTC_BACKWARD_KERNEL(ltc_cuda_backward_f64, double)
