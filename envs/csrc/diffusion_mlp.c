/* Kernels of the GMM diffusion drift network (hidden width 64, state dim 2), float32, AVX2 + FMA.

   The network: h0 = x·Wiᵀ + c_t (time embedding plus the state embedding's bias), g0 = GELU(h0),
   h1 = g0·W1ᵀ + b1, g1 = GELU(h1), h2 = g1·W2ᵀ + b2, g2 = GELU(h2), f = g2·Woᵀ + bo.

   - zarrl_mlp_sample: the Euler-Maruyama sampler of n trajectories, all steps in one call (rows
     are independent: OpenMP threads split them); optionally keeps GELU' and GELU of
     every layer and step (for the backward pass) and scores every step under a second (prior)
     network.
   - zarrl_mlp_backward: the parameter gradients of sum_r <gf_r, f(x_r)> given the kept tables,
     accumulated into the caller's per-thread buffers.
   - zarrl_mlp_out: f·dt of the rows from their kept last-layer activations.

   Matrix products use 6x16 register tiles; a block of 48 rows keeps its activations in L1/L2. */
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
    static const float zero[HID] = {0};
    if (keep) {
        zarrl_gelu_and_grad(h0, zero, g0, h0, R, HID);
        mm_nn(g0, p->w1_t, h1, R);
        zarrl_gelu_and_grad(h1, p->b1, g1, h1, R, HID);
        mm_nn(g1, p->w2_t, h2, R);
        zarrl_gelu_and_grad(h2, p->b2, g2, h2, R, HID);
    } else {
        zarrl_gelu(h0, zero, g0, R, HID);
        mm_nn(g0, p->w1_t, h1, R);
        zarrl_gelu(h1, p->b1, g1, R, HID);
        mm_nn(g1, p->w2_t, h2, R);
        zarrl_gelu(h2, p->b2, g2, R, HID);
    }
}

/* Samples rows [r0, r1) of n trajectories for T steps:
   xs[t+1][r] = xs[t][r] + dt·f(xs[t][r], t) + shift[t][r]   (xs: [T+1][n][DIM], shift: [T][n][DIM],
   dt already folded into post->wo and post->bo).
   tables: NULL, or six [T][n][HID] arrays receiving GELU'(h0), GELU(h0), GELU'(h1), GELU(h1),
   GELU'(h2), GELU(h2). prior: NULL, or a second network whose Gaussian log-density (std 1/inv_std,
   minus log_norm) of every step is written to ref_lp [T][n]. */
static void sample_rows(const zarrl_mlp *post, const zarrl_mlp *prior, int64_t n, int64_t r0,
                        int64_t r1, int64_t T, const float *shift, float *xs, float *const *tables,
                      float inv_std, float log_norm, float *ref_lp) {
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
                size_t bytes = (size_t)nb * HID * sizeof(float);
                for (int k = 0; k < 6; k++) memcpy(tables[k] + (t * n + b0) * HID, src[k], bytes);
            }
        }
    }
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
                        const float *wo, const float *w2, const float *w1, int64_t r0, int64_t r1,
                        int64_t cond_div, int64_t K, zarrl_mlp_grads *g) {
    const float *d0 = tables[0], *a0 = tables[1], *d1 = tables[2], *a1 = tables[3],
                *d2 = tables[4], *a2 = tables[5];
    float dh2[BLOCK * HID], dh1[BLOCK * HID], tmp[BLOCK * HID];
    for (int64_t b0 = r0; b0 < r1; b0 += BLOCK) {
        int nb = (int)(r1 - b0 < BLOCK ? r1 - b0 : BLOCK);
        int R = (nb + MR - 1) / MR * MR;
        const float *gfb = gf + b0 * DIM, *xb = x + b0 * DIM;
        memset(dh2, 0, sizeof dh2);
        for (int r = 0; r < nb; r++) {
            float u0 = gfb[r * DIM], u1 = gfb[r * DIM + 1];
            const float *ar = a2 + (b0 + r) * HID, *dr = d2 + (b0 + r) * HID;
            float *o = dh2 + r * HID;
            for (int k = 0; k < HID; k++) {
                g->wo[k] += u0 * ar[k];
                g->wo[HID + k] += u1 * ar[k];
                o[k] = (u0 * wo[k] + u1 * wo[HID + k]) * dr[k];
            }
            g->bo[0] += u0;
            g->bo[1] += u1;
        }
        mm_tn_acc(dh2, a1 + b0 * HID, g->w2, nb);
        mm_nn(dh2, w2, tmp, R);
        for (int r = 0; r < nb; r++) {
            const float *dr = d1 + (b0 + r) * HID, *src = dh2 + r * HID;
            float *o = dh1 + r * HID;
            for (int k = 0; k < HID; k++) {
                o[k] = tmp[r * HID + k] * dr[k];
                g->b2[k] += src[k];
            }
        }
        memset(dh1 + nb * HID, 0, (size_t)(R - nb) * HID * sizeof(float));
        mm_tn_acc(dh1, a0 + b0 * HID, g->w1, nb);
        mm_nn(dh1, w1, tmp, R);
        for (int r = 0; r < nb; r++) {
            const float *dr = d0 + (b0 + r) * HID, *src = dh1 + r * HID;
            float x0 = xb[r * DIM], x1 = xb[r * DIM + 1];
            float *gc = g->cond + (((b0 + r) / cond_div) % K) * HID;
            for (int k = 0; k < HID; k++) {
                float v = tmp[r * HID + k] * dr[k];
                g->b1[k] += src[k];
                g->wi_t[k] += x0 * v;
                g->wi_t[HID + k] += x1 * v;
                gc[k] += v;
            }
        }
    }
}

/* The exported entry points split the rows evenly over `threads` OpenMP threads (the runtime torch
   itself uses, so its pool is shared rather than contended). */
#define ROWS_OF(n)                                                                                \
    int nt = omp_get_num_threads(), id = omp_get_thread_num();                                    \
    int64_t r0 = (n) * id / nt, r1 = (n) * (id + 1) / nt;

void zarrl_mlp_sample(const zarrl_mlp *post, const zarrl_mlp *prior, int64_t n, int64_t T,
                      const float *shift, float *xs, float *const *tables, float inv_std,
                      float log_norm, float *ref_lp, int threads) {
#pragma omp parallel num_threads(threads)
    {
        ROWS_OF(n)
        sample_rows(post, prior, n, r0, r1, T, shift, xs, tables, inv_std, log_norm, ref_lp);
    }
}

void zarrl_mlp_out(const float *g2, const float *wo, const float *bo, int64_t n, float *out,
                   int threads) {
#pragma omp parallel num_threads(threads)
    {
        ROWS_OF(n)
        out_rows(g2, wo, bo, r0, r1, out);
    }
}

/* grads: one zeroed accumulator set per thread (`threads` of them), summed by the caller. */
void zarrl_mlp_backward(const float *const *tables, const float *x, const float *gf,
                        const float *wo, const float *w2, const float *w1, int64_t n,
                        int64_t cond_div, int64_t K, zarrl_mlp_grads *grads, int threads) {
#pragma omp parallel num_threads(threads)
    {
        ROWS_OF(n)
        backward_rows(tables, x, gf, wo, w2, w1, r0, r1, cond_div, K, grads + id);
    }
}
