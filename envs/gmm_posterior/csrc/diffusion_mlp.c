/* Kernels of the GMM diffusion drift network (hidden width 64, state dim 2), float32, AVX2 + FMA.

   The network: h0 = x·Wiᵀ + c_t (time embedding plus the state embedding's bias), g0 = GELU(h0),
   h1 = g0·W1ᵀ + b1, g1 = GELU(h1), h2 = g1·W2ᵀ + b2, g2 = GELU(h2), f = g2·Woᵀ + bo.

   - zarrl_mlp_sample: the Euler-Maruyama sampler of n trajectories, all steps in one call (rows
     are independent: OpenMP threads split them); optionally keeps GELU' and GELU of
     every layer and step (for the backward pass) and scores every step under a second (prior)
     network.
   - zarrl_mlp_backward: the parameter gradients of sum_r <gf_r, f(x_r)> given the kept tables
     (the first layer's may be missing: it is recomputed from x), accumulated into the caller's
     per-thread buffers.
   - zarrl_mlp_out: f·dt of the rows from their kept last-layer activations.

   Matrix products use 6x16 register tiles; a block of 48 rows keeps its activations in L1/L2;
   GELU is exact to float rounding (the Abramowitz-Stegun erf and exp of gelu.c, 8 lanes at once,
   with its exact limits beyond |x| = 13); every entry point runs with flush-to-zero and
   denormals-are-zero set on its threads and restores their MXCSR on exit, so no subnormal float
   is computed or stored (they cost ~100 cycles each on many Intel cores).
   Built with -fopenmp against the libgomp torch already loaded (same soname: one runtime). */
#include <immintrin.h>
#include <omp.h>
#include <stdint.h>
#include <string.h>

#if !defined(__AVX2__) || !defined(__FMA__)
#error "zarrl's diffusion kernels need AVX2 and FMA"
#endif

#define HID 64
#define DIM 2
#define MR 6
#define BLOCK 48 /* rows per block: a multiple of MR */

typedef struct {
    const float *wi_t; /* [DIM][HID]  state embedding weight, transposed */
    const float *cond; /* [T][HID]    time embedding + state embedding bias */
    const float *w1_t; /* [HID][HID]  first hidden layer weight, transposed */
    const float *b1;   /* [HID] */
    const float *w2_t; /* [HID][HID] */
    const float *b2;   /* [HID] */
    const float *wo;   /* [DIM][HID]  output weight times dt */
    const float *bo;   /* [DIM]       output bias times dt */
} zarrl_mlp;

/* C[R][64] = A[R][64] · B[64][64] (B k-major), R a multiple of MR. */
static void mm_nn(const float *A, const float *B, float *C, int R) {
    for (int r = 0; r < R; r += MR) {
        const float *a = A + r * HID;
        for (int j = 0; j < HID; j += 16) {
            __m256 c[MR][2];
            for (int m = 0; m < MR; m++) c[m][0] = c[m][1] = _mm256_setzero_ps();
            for (int k = 0; k < HID; k++) {
                __m256 w0 = _mm256_loadu_ps(B + k * HID + j);
                __m256 w1 = _mm256_loadu_ps(B + k * HID + j + 8);
                for (int m = 0; m < MR; m++) {
                    __m256 s = _mm256_broadcast_ss(a + m * HID + k);
                    c[m][0] = _mm256_fmadd_ps(s, w0, c[m][0]);
                    c[m][1] = _mm256_fmadd_ps(s, w1, c[m][1]);
                }
            }
            for (int m = 0; m < MR; m++) {
                _mm256_storeu_ps(C + (r + m) * HID + j, c[m][0]);
                _mm256_storeu_ps(C + (r + m) * HID + j + 8, c[m][1]);
            }
        }
    }
}

/* One M x 16 tile of G[64][64] += A[R][64]ᵀ · B[R][64] (rows n0.., cols k0..). */
static inline __attribute__((always_inline)) void tn_tile(const float *A, const float *B, float *G,
                                                          int R, int n0, int k0, const int M) {
    __m256 c[MR][2];
    for (int m = 0; m < M; m++) {
        c[m][0] = _mm256_loadu_ps(G + (n0 + m) * HID + k0);
        c[m][1] = _mm256_loadu_ps(G + (n0 + m) * HID + k0 + 8);
    }
    for (int r = 0; r < R; r++) {
        __m256 b0 = _mm256_loadu_ps(B + r * HID + k0), b1 = _mm256_loadu_ps(B + r * HID + k0 + 8);
        for (int m = 0; m < M; m++) {
            __m256 s = _mm256_broadcast_ss(A + r * HID + n0 + m);
            c[m][0] = _mm256_fmadd_ps(s, b0, c[m][0]);
            c[m][1] = _mm256_fmadd_ps(s, b1, c[m][1]);
        }
    }
    for (int m = 0; m < M; m++) {
        _mm256_storeu_ps(G + (n0 + m) * HID + k0, c[m][0]);
        _mm256_storeu_ps(G + (n0 + m) * HID + k0 + 8, c[m][1]);
    }
}

/* G[64][64] += A[R][64]ᵀ · B[R][64]. */
static void mm_tn_acc(const float *A, const float *B, float *G, int R) {
    for (int k0 = 0; k0 < HID; k0 += 16) {
        for (int n0 = 0; n0 + MR <= HID; n0 += MR) tn_tile(A, B, G, R, n0, k0, MR);
        tn_tile(A, B, G, R, HID - HID % MR, k0, HID % MR);
    }
}

/* sum over the 8 lanes */
static inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* out[r][d] = <g[r], w[d]> + b[d] for R rows. */
static void out_layer(const float *g, const float *w, const float *b, float *out, int R) {
    for (int r = 0; r < R; r++) {
        const float *gr = g + r * HID;
        __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
        for (int k = 0; k < HID; k += 8) {
            __m256 v = _mm256_loadu_ps(gr + k);
            s0 = _mm256_fmadd_ps(v, _mm256_loadu_ps(w + k), s0);
            s1 = _mm256_fmadd_ps(v, _mm256_loadu_ps(w + HID + k), s1);
        }
        out[r * DIM] = hsum(s0) + b[0];
        out[r * DIM + 1] = hsum(s1) + b[1];
    }
}

/* Beyond +-GELU_X0 GELU and GELU' are their limits (x and 1, 0 and 0; see gelu.c): the tail is
   evaluated at |x| <= 13 only, where exp(-x^2/2) >= 2.0e-37 and no product is subnormal. */
#define GELU_X0 13.0f

/* exp(x) of 8 lanes, -87 <= x <= 0 (the Cody-Waite + polynomial scheme of gelu.c). */
static inline __m256 exp_np8(__m256 x) {
    __m256 k = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(k, _mm256_set1_ps(0.693145751953125f), x);
    r = _mm256_fnmadd_ps(k, _mm256_set1_ps(1.428606765330187045e-06f), r);
    __m256 p = _mm256_set1_ps(0.0013888889f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.0083333324f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.041666418f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.16666667f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(k), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
}
/* GELU(x) and GELU'(x) of 8 lanes: the scalar kernel of gelu.c (Abramowitz-Stegun erf, one exp,
   Phi(-|x|) = s*e never formed alone), with the division done by a reciprocal estimate and one
   Newton step. NaN propagates: min/max return their second operand when one is NaN. */
static inline void gelu8(__m256 x, __m256 *g, __m256 *gp) {
    const __m256 sign = _mm256_set1_ps(-0.0f), one = _mm256_set1_ps(1.0f);
    __m256 xc = _mm256_max_ps(_mm256_set1_ps(-GELU_X0), _mm256_min_ps(_mm256_set1_ps(GELU_X0), x));
    __m256 z = _mm256_mul_ps(_mm256_andnot_ps(sign, xc), _mm256_set1_ps(0.70710678118654752f));
    __m256 den = _mm256_fmadd_ps(z, _mm256_set1_ps(0.3275911f), one);
    __m256 t = _mm256_rcp_ps(den);
    t = _mm256_mul_ps(t, _mm256_fnmadd_ps(den, t, _mm256_set1_ps(2.0f)));
    __m256 poly = _mm256_set1_ps(1.061405429f);
    poly = _mm256_fmadd_ps(poly, t, _mm256_set1_ps(-1.453152027f));
    poly = _mm256_fmadd_ps(poly, t, _mm256_set1_ps(1.421413741f));
    poly = _mm256_fmadd_ps(poly, t, _mm256_set1_ps(-0.284496736f));
    poly = _mm256_fmadd_ps(poly, t, _mm256_set1_ps(0.254829592f));
    __m256 s = _mm256_mul_ps(_mm256_mul_ps(poly, t), _mm256_set1_ps(0.5f));
    __m256 e = exp_np8(_mm256_mul_ps(_mm256_mul_ps(xc, xc), _mm256_set1_ps(-0.5f)));
    __m256 pos = _mm256_cmp_ps(xc, _mm256_setzero_ps(), _CMP_GE_OQ);
    __m256 xse = _mm256_mul_ps(_mm256_mul_ps(xc, s), e);
    __m256 gv = _mm256_blendv_ps(xse, _mm256_sub_ps(xc, xse), pos);
    __m256 ss = _mm256_blendv_ps(s, _mm256_xor_ps(s, sign), pos);
    __m256 dv = _mm256_fmadd_ps(e, _mm256_fmadd_ps(xc, _mm256_set1_ps(0.39894228040143268f), ss),
                                _mm256_and_ps(pos, one));
    __m256 hi = _mm256_cmp_ps(x, _mm256_set1_ps(GELU_X0), _CMP_GT_OQ);
    __m256 lo = _mm256_cmp_ps(x, _mm256_set1_ps(-GELU_X0), _CMP_LT_OQ);
    *g = _mm256_andnot_ps(lo, _mm256_blendv_ps(gv, x, hi));
    *gp = _mm256_andnot_ps(lo, _mm256_blendv_ps(dv, one, hi));
}
/* g = GELU(h + bias) and, when d is not NULL, d = GELU'(h + bias) (d may be h), for R rows. */
static void gelu_rows(float *h, const float *bias, float *g, float *d, int R) {
    for (int r = 0; r < R; r++) {
        for (int c = 0; c < HID; c += 8) {
            __m256 x = _mm256_loadu_ps(h + r * HID + c);
            if (bias) x = _mm256_add_ps(x, _mm256_loadu_ps(bias + c));
            __m256 a, b;
            gelu8(x, &a, &b);
            _mm256_storeu_ps(g + r * HID + c, a);
            if (d) _mm256_storeu_ps(d + r * HID + c, b);
        }
    }
}

/* Copies `rows` rows of HID floats to dst with non-temporal stores (the tables are written once
   per update and read back only by the backward pass: no read-for-ownership, no cache pollution). */
static void stream_rows(const float *src, float *dst, int rows) {
    if (((uintptr_t)dst & 31) != 0) {
        memcpy(dst, src, (size_t)rows * HID * sizeof(float));
        return;
    }
    for (int i = 0; i < rows * HID; i += 8) _mm256_stream_ps(dst + i, _mm256_loadu_ps(src + i));
}

/* Hidden activations of R (multiple of MR) rows x at step t. keep: GELU' replaces each
   pre-activation (h0/h1/h2 hold GELU'), else the GELU alone is taken. */
static void forward_block(const zarrl_mlp *p, const float *x, int64_t t, int R, int keep,
                          float *h0, float *g0, float *h1, float *g1, float *h2, float *g2) {
    const float *c = p->cond + t * HID;
    for (int r = 0; r < R; r++) {
        float x0 = x[r * DIM], x1 = x[r * DIM + 1];
        float *hr = h0 + r * HID;
        for (int k = 0; k < HID; k++) hr[k] = x0 * p->wi_t[k] + x1 * p->wi_t[HID + k] + c[k];
    }
    gelu_rows(h0, NULL, g0, keep ? h0 : NULL, R);
    mm_nn(g0, p->w1_t, h1, R);
    gelu_rows(h1, p->b1, g1, keep ? h1 : NULL, R);
    mm_nn(g1, p->w2_t, h2, R);
    gelu_rows(h2, p->b2, g2, keep ? h2 : NULL, R);
}

/* Samples rows [r0, r1) of n trajectories for T steps:
   xs[t+1][r] = xs[t][r] + dt·f(xs[t][r], t) + shift[t][r]   (xs: [T+1][n][DIM], shift: [T][n][DIM],
   dt already folded into post->wo and post->bo).
   tables: NULL, or six [T][n][HID] arrays receiving GELU'(h0), GELU(h0), GELU'(h1), GELU(h1),
   GELU'(h2), GELU(h2) (a NULL entry is skipped: the backward pass can recompute the first layer); drift: NULL, or [T][n][DIM] receiving dt·f of every step. prior: NULL, or a second network whose Gaussian log-density (std 1/inv_std,
   minus log_norm) of every step is written to ref_lp [T][n]. */
static void sample_rows(const zarrl_mlp *post, const zarrl_mlp *prior, int64_t n, int64_t r0,
                        int64_t r1, int64_t T, const float *shift, float *xs, float *const *tables,
                        float *drift, float inv_std, float log_norm, float *ref_lp) {
    float h0[BLOCK * HID], g0[BLOCK * HID], h1[BLOCK * HID], g1[BLOCK * HID], h2[BLOCK * HID],
        g2[BLOCK * HID];
    float x[BLOCK * DIM], f[BLOCK * DIM], fp[BLOCK * DIM];
    for (int64_t b0 = r0; b0 < r1; b0 += BLOCK) {
        int nb = (int)(r1 - b0 < BLOCK ? r1 - b0 : BLOCK);
        int R = (nb + MR - 1) / MR * MR;
        memset(x, 0, sizeof x);
        memcpy(x, xs + b0 * DIM, (size_t)nb * DIM * sizeof(float));
        for (int64_t t = 0; t < T; t++) {
            float *xn = xs + ((t + 1) * n + b0) * DIM;
            const float *sh = shift + (t * n + b0) * DIM;
            if (prior) { /* the prior at x_t, before x moves */
                forward_block(prior, x, t, R, 0, h0, g0, h1, g1, h2, g2);
                out_layer(g2, prior->wo, prior->bo, fp, nb);
            }
            forward_block(post, x, t, R, tables != NULL, h0, g0, h1, g1, h2, g2);
            out_layer(g2, post->wo, post->bo, f, nb);
            if (drift) memcpy(drift + (t * n + b0) * DIM, f, (size_t)nb * DIM * sizeof(float));
            for (int i = 0; i < nb * DIM; i++) {
                float next = x[i] + f[i] + sh[i];
                if (prior) fp[i] = (next - x[i] - fp[i]) * inv_std;
                x[i] = next;
                xn[i] = next;
            }
            if (prior) {
                float *lp = ref_lp + t * n + b0;
                for (int r = 0; r < nb; r++)
                    lp[r] = -0.5f * (fp[r * DIM] * fp[r * DIM] + fp[r * DIM + 1] * fp[r * DIM + 1]) -
                            log_norm;
            }
            if (tables) {
                const float *src[6] = {h0, g0, h1, g1, h2, g2};
                for (int k = 0; k < 6; k++)
                    if (tables[k]) stream_rows(src[k], tables[k] + (t * n + b0) * HID, nb);
            }
        }
    }
    _mm_sfence();
}

/* dt·f of rows [r0, r1) from their kept GELU(h2) rows g2 [n][HID]: out [n][DIM]. */
static void out_rows(const float *g2, const float *wo, const float *bo, int64_t r0, int64_t r1,
                     float *out) {
    for (int64_t b0 = r0; b0 < r1; b0 += BLOCK) {
        int nb = (int)(r1 - b0 < BLOCK ? r1 - b0 : BLOCK);
        out_layer(g2 + b0 * HID, wo, bo, out + b0 * DIM, nb);
    }
}

typedef struct {
    float *wo;     /* [DIM][HID] */
    float *bo;     /* [DIM] */
    float *w2;     /* [HID][HID] */
    float *b2;     /* [HID] */
    float *w1;     /* [HID][HID] */
    float *b1;     /* [HID] */
    float *wi_t;   /* [DIM][HID] */
    float *cond;   /* [K][HID]: row r adds to cond[(r / cond_div) % K] */
} zarrl_mlp_grads;

/* Accumulates into g the gradients of sum_r <gf[r], f(x_r)> over rows [r0, r1) (f without the dt
   factor: gf carries it), given the kept tables (d = GELU', a = GELU of each layer, [n][HID]) and
   the weights wo [DIM][HID], w2 and w1 [HID][HID] as stored (out, in). */
static void backward_rows(const float *const *tables, const float *x, const float *gf,
                          const float *wo, const float *w2, const float *w1, const float *wi_t,
                          const float *cond, int64_t r0, int64_t r1, int64_t cond_div, int64_t K,
                          zarrl_mlp_grads *g) {
    const float *d0 = tables[0], *a0 = tables[1], *d1 = tables[2], *a1 = tables[3],
                *d2 = tables[4], *a2 = tables[5];
    int recompute = d0 == NULL || a0 == NULL;
    float dh2[BLOCK * HID], dh1[BLOCK * HID], tmp[BLOCK * HID], h0[BLOCK * HID], g0[BLOCK * HID];
    for (int64_t b0 = r0; b0 < r1; b0 += BLOCK) {
        int nb = (int)(r1 - b0 < BLOCK ? r1 - b0 : BLOCK);
        int R = (nb + MR - 1) / MR * MR;
        const float *gfb = gf + b0 * DIM, *xb = x + b0 * DIM;
        const float *d1b = d1 + b0 * HID, *d2b = d2 + b0 * HID, *a2b = a2 + b0 * HID;
        const float *d0b, *a0b;
        if (recompute) { /* h0 = x·Wiᵀ + cond: two products per value, cheaper than a table read */
            for (int r = 0; r < nb; r++) {
                const float *c = cond + (((b0 + r) / cond_div) % K) * HID;
                float x0 = xb[r * DIM], x1 = xb[r * DIM + 1];
                for (int k = 0; k < HID; k++)
                    h0[r * HID + k] = x0 * wi_t[k] + x1 * wi_t[HID + k] + c[k];
            }
            gelu_rows(h0, NULL, g0, h0, nb);
            d0b = h0;
            a0b = g0;
        } else {
            d0b = d0 + b0 * HID;
            a0b = a0 + b0 * HID;
        }
        /* output layer: its gradients, and dh2 = (gf·Wo) ⊙ GELU'(h2); the accumulators of an
           8-column chunk stay in registers over the block's rows */
        for (int c = 0; c < HID; c += 8) {
            __m256 gw0 = _mm256_loadu_ps(g->wo + c), gw1 = _mm256_loadu_ps(g->wo + HID + c);
            __m256 w0 = _mm256_loadu_ps(wo + c), w1c = _mm256_loadu_ps(wo + HID + c);
            for (int r = 0; r < nb; r++) {
                __m256 u0 = _mm256_set1_ps(gfb[r * DIM]), u1 = _mm256_set1_ps(gfb[r * DIM + 1]);
                __m256 act = _mm256_loadu_ps(a2b + r * HID + c);
                gw0 = _mm256_fmadd_ps(u0, act, gw0);
                gw1 = _mm256_fmadd_ps(u1, act, gw1);
                __m256 v = _mm256_fmadd_ps(u1, w1c, _mm256_mul_ps(u0, w0));
                _mm256_storeu_ps(dh2 + r * HID + c,
                                 _mm256_mul_ps(v, _mm256_loadu_ps(d2b + r * HID + c)));
            }
            _mm256_storeu_ps(g->wo + c, gw0);
            _mm256_storeu_ps(g->wo + HID + c, gw1);
        }
        for (int r = 0; r < nb; r++) {
            g->bo[0] += gfb[r * DIM];
            g->bo[1] += gfb[r * DIM + 1];
        }
        memset(dh2 + nb * HID, 0, (size_t)(R - nb) * HID * sizeof(float));
        mm_tn_acc(dh2, a1 + b0 * HID, g->w2, nb);
        mm_nn(dh2, w2, tmp, R);
        for (int c = 0; c < HID; c += 8) {
            __m256 gb = _mm256_loadu_ps(g->b2 + c);
            for (int r = 0; r < nb; r++) {
                gb = _mm256_add_ps(gb, _mm256_loadu_ps(dh2 + r * HID + c));
                __m256 v = _mm256_mul_ps(_mm256_loadu_ps(tmp + r * HID + c),
                                         _mm256_loadu_ps(d1b + r * HID + c));
                _mm256_storeu_ps(dh1 + r * HID + c, v);
            }
            _mm256_storeu_ps(g->b2 + c, gb);
        }
        memset(dh1 + nb * HID, 0, (size_t)(R - nb) * HID * sizeof(float));
        mm_tn_acc(dh1, a0b, g->w1, nb);
        mm_nn(dh1, w1, tmp, R);
        /* dh0 = (dh1·W1) ⊙ GELU'(h0): gradients of b1, the state embedding and the time embedding
           (rows sharing a time embedding run consecutively when cond_div > 1) */
        for (int c = 0; c < HID; c += 8) {
            __m256 gb = _mm256_loadu_ps(g->b1 + c);
            __m256 gi0 = _mm256_loadu_ps(g->wi_t + c), gi1 = _mm256_loadu_ps(g->wi_t + HID + c);
            int64_t cur = (b0 / cond_div) % K;
            __m256 gc = _mm256_loadu_ps(g->cond + cur * HID + c);
            for (int r = 0; r < nb; r++) {
                int64_t idx = ((b0 + r) / cond_div) % K;
                if (idx != cur) {
                    _mm256_storeu_ps(g->cond + cur * HID + c, gc);
                    cur = idx;
                    gc = _mm256_loadu_ps(g->cond + cur * HID + c);
                }
                __m256 v = _mm256_mul_ps(_mm256_loadu_ps(tmp + r * HID + c),
                                         _mm256_loadu_ps(d0b + r * HID + c));
                gb = _mm256_add_ps(gb, _mm256_loadu_ps(dh1 + r * HID + c));
                gi0 = _mm256_fmadd_ps(_mm256_set1_ps(xb[r * DIM]), v, gi0);
                gi1 = _mm256_fmadd_ps(_mm256_set1_ps(xb[r * DIM + 1]), v, gi1);
                gc = _mm256_add_ps(gc, v);
            }
            _mm256_storeu_ps(g->cond + cur * HID + c, gc);
            _mm256_storeu_ps(g->b1 + c, gb);
            _mm256_storeu_ps(g->wi_t + c, gi0);
            _mm256_storeu_ps(g->wi_t + HID + c, gi1);
        }
    }
}

/* The exported entry points split the rows evenly over `threads` OpenMP threads (the runtime torch
   itself uses, so its pool is shared rather than contended). */
#define ROWS_OF(n)                                                                                \
    int nt = omp_get_num_threads(), id = omp_get_thread_num();                                    \
    int64_t r0 = (n) * id / nt, r1 = (n) * (id + 1) / nt;

/* Flush-to-zero and denormals-are-zero on each thread for the kernel's duration only: MXCSR is
   per thread, saved on entry and restored on exit (torch's pool threads get theirs back). */
#define MXCSR_FTZ_DAZ 0x8040u
#define FTZ_BEGIN                                                                                 \
    unsigned int saved_csr = _mm_getcsr();                                                        \
    _mm_setcsr(saved_csr | MXCSR_FTZ_DAZ);
#define FTZ_END _mm_setcsr(saved_csr);

void zarrl_mlp_sample(const zarrl_mlp *post, const zarrl_mlp *prior, int64_t n, int64_t T,
                      const float *shift, float *xs, float *const *tables, float *drift,
                      float inv_std, float log_norm, float *ref_lp, int threads) {
#pragma omp parallel num_threads(threads)
    {
        ROWS_OF(n)
        FTZ_BEGIN
        sample_rows(post, prior, n, r0, r1, T, shift, xs, tables, drift, inv_std, log_norm,
                    ref_lp);
        FTZ_END
    }
}

void zarrl_mlp_out(const float *g2, const float *wo, const float *bo, int64_t n, float *out,
                   int threads) {
#pragma omp parallel num_threads(threads)
    {
        ROWS_OF(n)
        FTZ_BEGIN
        out_rows(g2, wo, bo, r0, r1, out);
        FTZ_END
    }
}

/* grads: one zeroed accumulator set per thread (`threads` of them), summed by the caller. */
/* tables[0] and tables[1] may be NULL: the first layer is then recomputed from x, wi_t
   ([DIM][HID]) and cond ([K][HID], the time embedding plus the state embedding's bias). */
void zarrl_mlp_backward(const float *const *tables, const float *x, const float *gf,
                        const float *wo, const float *w2, const float *w1, const float *wi_t,
                        const float *cond, int64_t n, int64_t cond_div, int64_t K,
                        zarrl_mlp_grads *grads, int threads) {
#pragma omp parallel num_threads(threads)
    {
        ROWS_OF(n)
        FTZ_BEGIN
        backward_rows(tables, x, gf, wo, w2, w1, wi_t, cond, r0, r1, cond_div, K, grads + id);
        FTZ_END
    }
}
