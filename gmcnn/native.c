/* CPU kernels of the image-grid fast path (gmcnn/native.py compiles this file with the system C
 * compiler; without one the callers use torch operations): the 2 x 2 max pooling and its
 * backwards, the batch statistics, the training batch norm + ReLU, and the readout's max over
 * the point group and mean over the positions.
 *
 * Pooling: every array is contiguous, `planes` images of height x width (both even), and per
 * image the (height / 2) x (width / 2) windows. A window's entries are tl, tr (upper row) and bl, br
 * (lower row); its code is 2 * lower + right, the offset of its argmax (0 tl, 1 tr, 2 bl, 3 br).
 * The argmax is F.max_pool2d's: the first maximum in row-major order, from the comparisons
 * tr > tl, br > bl and bottom > top; a window with a NaN has the value NaN.
 *
 * Batch norms: x is (batch, channels, inner), contiguous; channel sums in 16 interleaved partial
 * sums of the input's type per row, then in double.
 *
 * The loops run on `threads` OpenMP threads (torch's, the same runtime).
 *
 * Selections are bit blends, so that the compiler vectorises the loops (a branch per window is
 * mispredicted on random data); with GMCNN_CLONES the loops are also built for AVX2 and AVX-512
 * and the loader picks the CPU's best (GCC's target_clones).
 */
#include <stdint.h>
#include <string.h>

#ifdef GMCNN_CLONES
#define KERNEL __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define KERNEL
#endif

static inline uint32_t bits_f32(float v) { uint32_t u; memcpy(&u, &v, sizeof u); return u; }
static inline float from_bits_f32(uint32_t u) { float v; memcpy(&v, &u, sizeof v); return v; }
static inline float select_f32(int condition, float a, float b) {          /* condition ? a : b */
    uint32_t mask = -(uint32_t)condition;
    return from_bits_f32((bits_f32(a) & mask) | (bits_f32(b) & ~mask));
}
static inline uint64_t bits_f64(double v) { uint64_t u; memcpy(&u, &v, sizeof u); return u; }
static inline double from_bits_f64(uint64_t u) { double v; memcpy(&v, &u, sizeof v); return v; }
static inline double select_f64(int condition, double a, double b) {
    uint64_t mask = -(uint64_t)condition;
    return from_bits_f64((bits_f64(a) & mask) | (bits_f64(b) & ~mask));
}

/* values[window] = max of the window (NaN if it holds one), code[window] = its argmax's offset */
#define MAX_POOL(T, SUFFIX)                                                                         \
KERNEL void max_pool2x2_##SUFFIX(const T *restrict x, T *restrict values, uint8_t *restrict code,   \
                                 int64_t planes, int64_t height, int64_t width, int threads) {      \
    const int64_t rows = height / 2, cols = width / 2;                                              \
    _Pragma("omp parallel for schedule(static) num_threads(threads)")                               \
    for (int64_t p = 0; p < planes; p++) {                                                          \
        for (int64_t i = 0; i < rows; i++) {                                                        \
            const T *restrict upper = x + (p * height + 2 * i) * width;                             \
            const T *restrict lower_row = upper + width;                                            \
            T *restrict out = values + (p * rows + i) * cols;                                       \
            uint8_t *restrict where = code + (p * rows + i) * cols;                                 \
            for (int64_t j = 0; j < cols; j++) {                                                    \
                T tl = upper[2 * j], tr = upper[2 * j + 1];                                         \
                T bl = lower_row[2 * j], br = lower_row[2 * j + 1];                                 \
                int right_top = tr > tl, right_bottom = br > bl;                                    \
                T top = select_##SUFFIX(right_top, tr, tl);                                         \
                T bottom = select_##SUFFIX(right_bottom, br, bl);                                   \
                int lower = bottom > top;                                                           \
                int nan = (tl != tl) | (tr != tr) | (bl != bl) | (br != br);                        \
                out[j] = select_##SUFFIX(nan, tl + tr + bl + br, select_##SUFFIX(lower, bottom, top)); \
                where[j] = (uint8_t)(2 * lower + ((lower & right_bottom) | ((1 - lower) & right_top))); \
            }                                                                                       \
        }                                                                                           \
    }                                                                                               \
}

/* grad_x = grad at each window's argmax, 0 elsewhere (F.max_pool2d's backward) */
#define MAX_UNPOOL(T, SUFFIX)                                                                       \
KERNEL void max_unpool2x2_##SUFFIX(const T *restrict grad, const uint8_t *restrict code,            \
                                   T *restrict grad_x, int64_t planes, int64_t height, int64_t width, int threads) { \
    const int64_t rows = height / 2, cols = width / 2;                                              \
    _Pragma("omp parallel for schedule(static) num_threads(threads)")                               \
    for (int64_t p = 0; p < planes; p++) {                                                          \
        for (int64_t i = 0; i < rows; i++) {                                                        \
            const T *restrict g = grad + (p * rows + i) * cols;                                     \
            const uint8_t *restrict where = code + (p * rows + i) * cols;                           \
            T *restrict upper = grad_x + (p * height + 2 * i) * width;                              \
            T *restrict lower_row = upper + width;                                                  \
            for (int64_t j = 0; j < cols; j++) {                                                    \
                uint32_t c = where[j];                                                              \
                T v = g[j];                                                                         \
                upper[2 * j] = select_##SUFFIX(c == 0, v, 0);                                       \
                upper[2 * j + 1] = select_##SUFFIX(c == 1, v, 0);                                   \
                lower_row[2 * j] = select_##SUFFIX(c == 2, v, 0);                                   \
                lower_row[2 * j + 1] = select_##SUFFIX(c == 3, v, 0);                               \
            }                                                                                       \
        }                                                                                           \
    }                                                                                               \
}

/* The batch norm's backward after the pooling, over h in place: h = shift[c] + slope[c] h, plus
 * gain[c] grad at each window's argmax, for the channel c = (p / points) % channels of image p;
 * with relu, only where the pooled output value_scale[c] values + value_shift[c] is > 0 (the
 * ReLU after the pooling, its mask recomputed as batch_norm_relu computes it). */
#define UNPOOL_ROW(T, SUFFIX, MASK)                                                                \
    for (int64_t j = 0; j < cols; j++) {                                                           \
        uint32_t c = where[j];                                                                     \
        T v = g[j] * k;                                                                            \
        MASK                                                                                       \
        upper[2 * j] = (b + a * upper[2 * j]) + select_##SUFFIX(c == 0, v, 0);                     \
        upper[2 * j + 1] = (b + a * upper[2 * j + 1]) + select_##SUFFIX(c == 1, v, 0);             \
        lower_row[2 * j] = (b + a * lower_row[2 * j]) + select_##SUFFIX(c == 2, v, 0);             \
        lower_row[2 * j + 1] = (b + a * lower_row[2 * j + 1]) + select_##SUFFIX(c == 3, v, 0);     \
    }
#define NORM_UNPOOL(T, SUFFIX)                                                                     \
KERNEL void batch_norm_unpool2x2_##SUFFIX(T *restrict h, const T *restrict grad,                  \
                                          const uint8_t *restrict code, const T *restrict shift,   \
                                          const T *restrict slope, const T *restrict gain,         \
                                          int relu, const T *restrict values,                      \
                                          const T *restrict value_scale,                           \
                                          const T *restrict value_shift, int64_t planes,           \
                                          int64_t channels, int64_t points, int64_t height,        \
                                          int64_t width, int threads) {                            \
    const int64_t rows = height / 2, cols = width / 2;                                             \
    _Pragma("omp parallel for schedule(static) num_threads(threads)")                              \
    for (int64_t p = 0; p < planes; p++) {                                                         \
        const int64_t channel = (p / points) % channels;                                           \
        const T a = slope[channel], b = shift[channel], k = gain[channel];                         \
        for (int64_t i = 0; i < rows; i++) {                                                       \
            T *restrict upper = h + (p * height + 2 * i) * width;                                  \
            T *restrict lower_row = upper + width;                                                 \
            const T *restrict g = grad + (p * rows + i) * cols;                                    \
            const uint8_t *restrict where = code + (p * rows + i) * cols;                          \
            if (relu) {                                                                            \
                const T *restrict pooled = values + (p * rows + i) * cols;                         \
                const T vs = value_scale[channel], vb = value_shift[channel];                      \
                UNPOOL_ROW(T, SUFFIX, v = select_##SUFFIX(vs * pooled[j] + vb <= 0, 0, v);)        \
            } else {                                                                               \
                UNPOOL_ROW(T, SUFFIX, )                                                            \
            }                                                                                      \
        }                                                                                          \
    }                                                                                              \
}

/* Sums of a row in LANES interleaved partial sums (each one in order, so that the compiler
 * vectorises them without reassociating), then in double. */
#define LANES 16
#define ROW_SUMS(T, SUFFIX)                                                                        \
static inline double row_sum_##SUFFIX(const T *restrict x, int64_t n) {                            \
    T partial[LANES] = {0};                                                                        \
    int64_t j = 0;                                                                                 \
    for (; j + LANES <= n; j += LANES)                                                             \
        for (int k = 0; k < LANES; k++) partial[k] += x[j + k];                                    \
    double total = 0;                                                                              \
    for (int k = 0; k < LANES; k++) total += partial[k];                                           \
    for (; j < n; j++) total += x[j];                                                              \
    return total;                                                                                  \
}                                                                                                  \
static inline double row_square_sum_##SUFFIX(const T *restrict x, int64_t n, T centre) {          \
    T partial[LANES] = {0};                                                                        \
    int64_t j = 0;                                                                                 \
    for (; j + LANES <= n; j += LANES)                                                             \
        for (int k = 0; k < LANES; k++) partial[k] += (x[j + k] - centre) * (x[j + k] - centre);   \
    double total = 0;                                                                              \
    for (int k = 0; k < LANES; k++) total += partial[k];                                           \
    for (; j < n; j++) total += (double)(x[j] - centre) * (x[j] - centre);                         \
    return total;                                                                                  \
}

/* The mean and the biased variance of every channel c of x (batch, channels, inner) over the
 * batch and the inner axis, in two passes (the mean, then the squares about it). */
#define CHANNEL_MEAN_VAR(T, SUFFIX)                                                                \
KERNEL void channel_mean_var_##SUFFIX(const T *restrict x, double *restrict mean,                  \
                                      double *restrict var, int64_t batch, int64_t channels,       \
                                      int64_t inner, int threads) {                                \
    const double count = (double)batch * (double)inner;                                            \
    _Pragma("omp parallel for schedule(static) num_threads(threads)")                              \
    for (int64_t c = 0; c < channels; c++) {                                                       \
        double total = 0, squares = 0;                                                             \
        for (int64_t b = 0; b < batch; b++) total += row_sum_##SUFFIX(x + (b * channels + c) * inner, inner); \
        const double centre = total / count;                                                       \
        for (int64_t b = 0; b < batch; b++)                                                        \
            squares += row_square_sum_##SUFFIX(x + (b * channels + c) * inner, inner, (T)centre);  \
        mean[c] = centre;                                                                          \
        var[c] = squares / count;                                                                  \
    }                                                                                              \
}

/* The training batch norm of x (batch, channels, inner) followed by a ReLU, with the per-channel
 * affine map z = scale[c] x + shift[c] (scale = gamma / sqrt(var + eps), shift = beta - scale mean):
 * y = relu(z), where relu keeps a NaN (z <= 0 ? 0 : z, as torch's threshold). */
#define NORM_RELU(T, SUFFIX)                                                                       \
KERNEL void batch_norm_relu_##SUFFIX(const T *restrict x, const T *restrict scale,                 \
                                     const T *restrict shift, T *restrict y, int64_t batch,        \
                                     int64_t channels, int64_t inner, int threads) {               \
    _Pragma("omp parallel for schedule(static) num_threads(threads)")                              \
    for (int64_t p = 0; p < batch * channels; p++) {                                               \
        const T a = scale[p % channels], b = shift[p % channels];                                  \
        const T *restrict row = x + p * inner;                                                     \
        T *restrict out = y + p * inner;                                                           \
        for (int64_t j = 0; j < inner; j++) {                                                      \
            T z = a * row[j] + b;                                                                  \
            out[j] = select_##SUFFIX(z <= 0, 0, z);                                                \
        }                                                                                          \
    }                                                                                              \
}

/* Its backward's channel sums, over the entries the ReLU passed (z recomputed from x as in the
 * forward): sum_g[c] = sum g, sum_gx[c] = sum g (x - mean[c]). */
#define NORM_RELU_SUMS(T, SUFFIX)                                                                  \
KERNEL void batch_norm_relu_sums_##SUFFIX(const T *restrict grad, const T *restrict x,            \
                                          const T *restrict scale, const T *restrict shift,        \
                                          const T *restrict mean, double *restrict sum_g,          \
                                          double *restrict sum_gx, int64_t batch, int64_t channels, \
                                          int64_t inner, int threads) {                            \
    _Pragma("omp parallel for schedule(static) num_threads(threads)")                              \
    for (int64_t c = 0; c < channels; c++) {                                                       \
        const T a = scale[c], b = shift[c], m = mean[c];                                           \
        double total_g = 0, total_gx = 0;                                                          \
        for (int64_t n = 0; n < batch; n++) {                                                      \
            const T *restrict g = grad + (n * channels + c) * inner;                               \
            const T *restrict row = x + (n * channels + c) * inner;                                \
            T partial_g[LANES] = {0}, partial_gx[LANES] = {0};                                     \
            int64_t j = 0;                                                                         \
            for (; j + LANES <= inner; j += LANES)                                                 \
                for (int k = 0; k < LANES; k++) {                                                  \
                    T passed = select_##SUFFIX(a * row[j + k] + b <= 0, 0, g[j + k]);              \
                    partial_g[k] += passed;                                                        \
                    partial_gx[k] += passed * (row[j + k] - m);                                    \
                }                                                                                  \
            for (int k = 0; k < LANES; k++) { total_g += partial_g[k]; total_gx += partial_gx[k]; } \
            for (; j < inner; j++) {                                                               \
                T passed = select_##SUFFIX(a * row[j] + b <= 0, 0, g[j]);                          \
                total_g += passed;                                                                 \
                total_gx += (double)passed * (row[j] - m);                                         \
            }                                                                                      \
        }                                                                                          \
        sum_g[c] = total_g;                                                                        \
        sum_gx[c] = total_gx;                                                                      \
    }                                                                                              \
}

/* Its input gradient, written over x: scale[c] g (where the ReLU passed) + k_x[c] x + k_0[c]. */
#define NORM_RELU_BACKWARD(T, SUFFIX)                                                              \
KERNEL void batch_norm_relu_backward_##SUFFIX(T *restrict x, const T *restrict grad,               \
                                              const T *restrict scale, const T *restrict shift,    \
                                              const T *restrict k_x, const T *restrict k_0,        \
                                              int64_t batch, int64_t channels, int64_t inner,      \
                                              int threads) {                                       \
    _Pragma("omp parallel for schedule(static) num_threads(threads)")                              \
    for (int64_t p = 0; p < batch * channels; p++) {                                               \
        const int64_t c = p % channels;                                                            \
        const T a = scale[c], b = shift[c], kx = k_x[c], k0 = k_0[c];                              \
        T *restrict row = x + p * inner;                                                           \
        const T *restrict g = grad + p * inner;                                                    \
        for (int64_t j = 0; j < inner; j++) {                                                      \
            T passed = select_##SUFFIX(a * row[j] + b <= 0, 0, g[j]);                              \
            row[j] = a * passed + (kx * row[j] + k0);                                              \
        }                                                                                          \
    }                                                                                              \
}

/* The readout of (rows, points, inner): out[r] = the mean over i of the maximum over q of
 * x[r, q, i] (a NaN wins, as amax); its backward: grad[r] / inner shared equally by the entries
 * equal to their column's maximum (amax's rule for ties). */
#define POINT_MAX_MEAN(T, SUFFIX)                                                                  \
static inline T column_max_##SUFFIX(const T *restrict column, int64_t points, int64_t stride) {    \
    T m = column[0];                                                                               \
    for (int64_t q = 1; q < points; q++) {                                                         \
        T v = column[q * stride];                                                                  \
        m = select_##SUFFIX((v > m) | (v != v), v, m);                                             \
    }                                                                                              \
    return m;                                                                                      \
}                                                                                                  \
KERNEL void point_max_mean_##SUFFIX(const T *restrict x, T *restrict out, int64_t rows,            \
                                    int64_t points, int64_t inner, int threads) {                  \
    _Pragma("omp parallel for schedule(static) num_threads(threads)")                              \
    for (int64_t r = 0; r < rows; r++) {                                                           \
        const T *restrict row = x + r * points * inner;                                            \
        double total = 0;                                                                          \
        for (int64_t i = 0; i < inner; i++) {                                                      \
            const T m = column_max_##SUFFIX(row + i, points, inner);                               \
            total += m;                                                                            \
        }                                                                                          \
        out[r] = (T)(total / (double)inner);                                                       \
    }                                                                                              \
}                                                                                                  \
KERNEL void point_max_mean_backward_##SUFFIX(const T *restrict x, const T *restrict grad,          \
                                             T *restrict grad_x, int64_t rows, int64_t points,     \
                                             int64_t inner, int threads) {                         \
    _Pragma("omp parallel for schedule(static) num_threads(threads)")                              \
    for (int64_t r = 0; r < rows; r++) {                                                           \
        const T *restrict row = x + r * points * inner;                                            \
        T *restrict out = grad_x + r * points * inner;                                             \
        const T share = grad[r] / (T)inner;                                                        \
        for (int64_t i = 0; i < inner; i++) {                                                      \
            const T m = column_max_##SUFFIX(row + i, points, inner);                               \
            T ties = 0;                                                                            \
            for (int64_t q = 0; q < points; q++) ties += row[q * inner + i] == m;                  \
            const T v = share / ties;                                                              \
            for (int64_t q = 0; q < points; q++)                                                   \
                out[q * inner + i] = select_##SUFFIX(row[q * inner + i] == m, v, 0);               \
        }                                                                                          \
    }                                                                                              \
}

MAX_POOL(float, f32)
MAX_POOL(double, f64)
MAX_UNPOOL(float, f32)
MAX_UNPOOL(double, f64)
NORM_UNPOOL(float, f32)
NORM_UNPOOL(double, f64)
ROW_SUMS(float, f32)
ROW_SUMS(double, f64)
CHANNEL_MEAN_VAR(float, f32)
CHANNEL_MEAN_VAR(double, f64)
NORM_RELU(float, f32)
NORM_RELU(double, f64)
NORM_RELU_SUMS(float, f32)
NORM_RELU_SUMS(double, f64)
NORM_RELU_BACKWARD(float, f32)
NORM_RELU_BACKWARD(double, f64)
POINT_MAX_MEAN(float, f32)
POINT_MAX_MEAN(double, f64)
