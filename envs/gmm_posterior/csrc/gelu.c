/* Exact GELU and GELU' in one pass (see zarrl.envs.gmm_posterior.native_gelu).

   Free of subnormal floats for every input: |x| is clamped to GELU_X0 before the tail
   Phi(-|x|) = s*exp(-x^2/2) is evaluated (beyond it the results are the exact limits), the tail
   is never formed alone (x*s and s +- x/sqrt(2 pi) are multiplied by the exponential last), and the
   functions run with flush-to-zero and denormals-are-zero set in MXCSR for their own duration
   only (saved and restored on the calling thread). */
#include <stdint.h>
#include <string.h>
#include <xmmintrin.h>

/* Beyond +-GELU_X0 the results are the limits: GELU(x) = x and GELU'(x) = 1 for x >= GELU_X0
   (float32 rounds them so from x = 6 on), 0 and 0 for x <= -GELU_X0 (|GELU(-13)| = 8e-38 and
   |GELU'(-13)| = 1.0e-36 are within 100 FLT_MIN of 0). For |x| <= 13 exp(-x^2/2) >= 2.0e-37,
   and every product below stays above FLT_MIN. */
#define GELU_X0 13.0f
#define MXCSR_FTZ_DAZ 0x8040u

/* exp(x) for -87 <= x <= 0, relative error ~1e-7: Cody-Waite reduction and a degree-6
   polynomial (at x = -87: 2^-126 times p(0.34) > 1, a normal float). */
static inline float exp_nonpositive(float x) {
    float k = __builtin_roundf(x * 1.44269504088896341f);
    float r = x - k * 0.693145751953125f - k * 1.428606765330187045e-06f;
    float p = 1.0f + r * (1.0f + r * (0.5f + r * (0.16666667f + r * (0.041666418f
              + r * (0.0083333324f + r * 0.0013888889f)))));
    int32_t bits = ((int32_t)k + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

/* GELU(x) into *g and GELU'(x) into *gp. Abramowitz-Stegun 7.1.26: Phi(-|x|) = s*e with
   e = exp(-x^2/2); GELU = x - x*s*e (x >= 0) or x*s*e, GELU' = 1 + e*(x/sqrt(2 pi) - s) or
   e*(x/sqrt(2 pi) + s). NaN propagates (every comparison with it is false). */
static inline void gelu_point(float x, float *g, float *gp) {
    float xc = x > GELU_X0 ? GELU_X0 : (x < -GELU_X0 ? -GELU_X0 : x);
    float z = (xc < 0.0f ? -xc : xc) * 0.70710678118654752f;
    float t = 1.0f / (1.0f + 0.3275911f * z);
    float s = 0.5f * t * (0.254829592f + t * (-0.284496736f + t * (1.421413741f
              + t * (-1.453152027f + t * 1.061405429f))));
    float e = exp_nonpositive(-0.5f * xc * xc);
    int pos = xc >= 0.0f;
    float xse = (xc * s) * e;
    float gv = pos ? xc - xse : xse;
    float dv = (pos ? 1.0f : 0.0f) + e * (xc * 0.39894228040143268f + (pos ? -s : s));
    *g = x > GELU_X0 ? x : (x < -GELU_X0 ? 0.0f : gv);
    *gp = x > GELU_X0 ? 1.0f : (x < -GELU_X0 ? 0.0f : dv);
}

/* GELU(h + bias) into g and GELU'(h + bias) into gp; h, g, gp are [rows, cols] (gp may be h),
   bias is [cols]. */
void zarrl_gelu_and_grad(const float *h, const float *bias, float *g, float *gp, int64_t rows,
                         int64_t cols) {
    unsigned int csr = _mm_getcsr();
    _mm_setcsr(csr | MXCSR_FTZ_DAZ);
    for (int64_t r = 0; r < rows; r++) {
        const float *hr = h + r * cols;
        float *gr = g + r * cols, *pr = gp + r * cols;
#pragma GCC ivdep
        for (int64_t c = 0; c < cols; c++) {
            float a, b;
            gelu_point(hr[c] + bias[c], &a, &b);
            gr[c] = a;
            pr[c] = b;
        }
    }
    _mm_setcsr(csr);
}

/* GELU(h + bias) into g (may be h). */
void zarrl_gelu(const float *h, const float *bias, float *g, int64_t rows, int64_t cols) {
    unsigned int csr = _mm_getcsr();
    _mm_setcsr(csr | MXCSR_FTZ_DAZ);
    for (int64_t r = 0; r < rows; r++) {
        const float *hr = h + r * cols;
        float *gr = g + r * cols;
#pragma GCC ivdep
        for (int64_t c = 0; c < cols; c++) {
            float a, b;
            gelu_point(hr[c] + bias[c], &a, &b);
            gr[c] = a;
        }
    }
    _mm_setcsr(csr);
}
