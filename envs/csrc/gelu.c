/* Exact GELU and GELU' in one pass (see zarrl.envs.native_gelu). */
#include <stdint.h>
#include <string.h>

/* exp(x) for x <= 0, relative error ~1e-7: Cody-Waite reduction and a degree-6 polynomial. */
static inline float exp_nonpositive(float x) {
    x = x < -87.0f ? -87.0f : x;
    float k = __builtin_roundf(x * 1.44269504088896341f);
    float r = x - k * 0.693145751953125f - k * 1.428606765330187045e-06f;
    float p = 1.0f + r * (1.0f + r * (0.5f + r * (0.16666667f + r * (0.041666418f
              + r * (0.0083333324f + r * 0.0013888889f)))));
    int32_t bits = ((int32_t)k + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

/* Phi(x) (standard normal cdf) and e = exp(-x^2/2). */
static inline float normal_cdf(float x, float *e) {
    float z = (x < 0.0f ? -x : x) * 0.70710678118654752f;
    float t = 1.0f / (1.0f + 0.3275911f * z);
    float poly = t * (0.254829592f + t * (-0.284496736f + t * (1.421413741f
                 + t * (-1.453152027f + t * 1.061405429f))));
    *e = exp_nonpositive(-0.5f * x * x);
    float tail = 0.5f * poly * *e; /* Phi(-|x|) */
    return x < 0.0f ? tail : 1.0f - tail;
}

/* GELU(h + bias) into g and GELU'(h + bias) into gp; h, g, gp are [rows, cols] (gp may be h),
   bias is [cols]. */
void zarrl_gelu_and_grad(const float *h, const float *bias, float *g, float *gp, int64_t rows,
                         int64_t cols) {
    for (int64_t r = 0; r < rows; r++) {
        const float *hr = h + r * cols;
        float *gr = g + r * cols, *pr = gp + r * cols;
#pragma GCC ivdep
        for (int64_t c = 0; c < cols; c++) {
            float x = hr[c] + bias[c], e;
            float cdf = normal_cdf(x, &e);
            gr[c] = x * cdf;
            pr[c] = cdf + x * e * 0.39894228040143268f;
        }
    }
}

/* GELU(h + bias) into g (may be h). */
void zarrl_gelu(const float *h, const float *bias, float *g, int64_t rows, int64_t cols) {
    for (int64_t r = 0; r < rows; r++) {
        const float *hr = h + r * cols;
        float *gr = g + r * cols;
#pragma GCC ivdep
        for (int64_t c = 0; c < cols; c++) {
            float x = hr[c] + bias[c], e;
            gr[c] = x * normal_cdf(x, &e);
        }
    }
}
