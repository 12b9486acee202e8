/* ---- kernels: integer-only int8 layers (kdlib/assets/mcu/kernels.c) ----------------------
 * Activations are int8 in (C, H, W) order, weights int8 in (C_out, C_in, kh, kw) order with
 * zero point 0, biases int32. A layer computes, for each output channel c,
 *     acc = bias[c] + sum (x - in_zp) * w          int32 (exact: no overflow for these sizes)
 *     y   = clamp(requant(acc, c) + out_zp, lo, 127)
 * KD_REQUANT_FIXED: M = m / 2^s with a 24-bit m, rounded the way float32 arithmetic rounds
 *     (acc and the product to 24 significant bits, then to an integer, ties to even): the same
 *     integers as ONNX Runtime's x86 kernels, which compute float32(acc) * float32(M).
 * KD_REQUANT_GEMMLOWP: M = M0 * 2^(e - 31) with a 31-bit M0, a rounding doubling high multiply
 *     and a rounding right shift (ties away from zero), as TFLite Micro and CMSIS-NN do it.
 * Needs a C99 compiler whose >> on negative numbers is arithmetic (GCC, Clang, Arm Compiler).
 */
#include <stdint.h>

#define KD_MIN(a, b) ((a) < (b) ? (a) : (b))
#define KD_MAX(a, b) ((a) > (b) ? (a) : (b))

#if defined(KD_REQUANT_FIXED)
/* x / 2^s rounded to nearest, ties to even (s >= 1). */
static int64_t kd_shift_round_even(int64_t x, int s)
{
    int64_t floor = x >> s;                       /* arithmetic shift: rounds toward -infinity */
    int64_t rem = x & (((int64_t)1 << s) - 1);    /* x - floor * 2^s, in [0, 2^s) */
    int64_t half = (int64_t)1 << (s - 1);
    return floor + (rem > half || (rem == half && (floor & 1)));
}

/* x rounded to 24 significant bits, ties to even: the integer a float32 would hold. */
static int64_t kd_round_float32(int64_t x)
{
    uint64_t a = (uint64_t)(x < 0 ? -x : x);
    int bits = a ? 64 - __builtin_clzll(a) : 0;
    if (bits <= 24) return x;
    return kd_shift_round_even(x, bits - 24) * ((int64_t)1 << (bits - 24));
}

static int32_t kd_requant(int32_t acc, int32_t m, int32_t s)
{
    int64_t p = kd_round_float32(kd_round_float32(acc) * (int64_t)m);
    int64_t q = s > 0 ? kd_shift_round_even(p, s) : p * ((int64_t)1 << -s);
    return (int32_t)KD_MAX(KD_MIN(q, 1 << 20), -(1 << 20));   /* saturate: the clamp to int8 follows */
}
#elif defined(KD_REQUANT_GEMMLOWP)
static int32_t kd_requant(int32_t acc, int32_t m0, int32_t e)
{
    int left = e > 0 ? e : 0, right = e > 0 ? 0 : -e;
    int64_t x = (int64_t)acc * ((int64_t)1 << left);
    x = KD_MAX(KD_MIN(x, INT32_MAX), INT32_MIN);
    int64_t ab = x * (int64_t)m0;                            /* SaturatingRoundingDoublingHighMul */
    int64_t nudge = ab >= 0 ? ((int64_t)1 << 30) : 1 - ((int64_t)1 << 30);
    int32_t high = (x == INT32_MIN && m0 == INT32_MIN) ? INT32_MAX : (int32_t)((ab + nudge) / ((int64_t)1 << 31));
    int32_t mask = (int32_t)(((int64_t)1 << right) - 1);      /* RoundingDivideByPOT */
    int32_t threshold = (mask >> 1) + (high < 0);
    return (high >> right) + ((high & mask) > threshold);
}
#else
#error "define KD_REQUANT_FIXED or KD_REQUANT_GEMMLOWP"
#endif

static int8_t kd_output(int32_t acc, int32_t m, int32_t s, int32_t out_zp, int32_t lo)
{
    int32_t q = kd_requant(acc, m, s) + out_zp;
    return (int8_t)KD_MAX(KD_MIN(q, 127), lo);
}

/* One output value of a k x k convolution at (y, x), 'same' zero padding: the taps that fall
 * outside the image would add (in_zp - in_zp) * w = 0, so only the taps inside are summed
 * (rows ky0..ky1-1, columns kx0..kx1-1 of the kernel). */
static int32_t kd_conv_at(const int8_t *in, int c_in, int h, int w, int k, const int8_t *wt,
                          int32_t bias, int32_t in_zp, int y, int x)
{
    int pad = k / 2;
    int ky0 = KD_MAX(0, pad - y), ky1 = KD_MIN(k, h + pad - y);
    int kx0 = KD_MAX(0, pad - x), kx1 = KD_MIN(k, w + pad - x);
    int32_t acc = bias;
    for (int ic = 0; ic < c_in; ic++) {
        for (int ky = ky0; ky < ky1; ky++) {
            const int8_t *row = in + (ic * h + y + ky - pad) * w + x - pad;
            const int8_t *taps = wt + (ic * k + ky) * k;
            for (int kx = kx0; kx < kx1; kx++) acc += ((int32_t)row[kx] - in_zp) * taps[kx];
        }
    }
    return acc;
}

/* Convolution (stride 1), requantization with the ReLU clamp, and a pool x pool max-pool
 * (pool 1: none) fused: only the pooled output is stored. out: (c_out, h / pool, w / pool). */
static void kd_conv(const int8_t *in, int8_t *out, int c_in, int h, int w, int c_out, int k, int pool,
                    const int8_t *wt, const int32_t *bias, const int32_t *mult, const int8_t *shift,
                    int32_t in_zp, int32_t out_zp, int32_t lo)
{
    int oh = h / pool, ow = w / pool;
    for (int oc = 0; oc < c_out; oc++) {
        const int8_t *w_oc = wt + oc * c_in * k * k;
        for (int py = 0; py < oh; py++) {
            for (int px = 0; px < ow; px++) {
                int8_t best = -128;
                for (int dy = 0; dy < pool; dy++) {
                    for (int dx = 0; dx < pool; dx++) {
                        int32_t acc = kd_conv_at(in, c_in, h, w, k, w_oc, bias[oc], in_zp,
                                                 py * pool + dy, px * pool + dx);
                        int8_t q = kd_output(acc, mult[oc], shift[oc], out_zp, lo);
                        best = KD_MAX(best, q);
                    }
                }
                out[(oc * oh + py) * ow + px] = best;
            }
        }
    }
}

/* Fully connected layer: out[c] = requant(bias[c] + sum_i (in[i] - in_zp) * wt[c][i]). */
static void kd_linear(const int8_t *in, int8_t *out, int n_in, int n_out, const int8_t *wt,
                      const int32_t *bias, const int32_t *mult, const int8_t *shift,
                      int32_t in_zp, int32_t out_zp, int32_t lo)
{
    for (int c = 0; c < n_out; c++) {
        int32_t acc = bias[c];
        const int8_t *row = wt + c * n_in;
        for (int i = 0; i < n_in; i++) acc += ((int32_t)in[i] - in_zp) * row[i];
        out[c] = kd_output(acc, mult[c], shift[c], out_zp, lo);
    }
}
