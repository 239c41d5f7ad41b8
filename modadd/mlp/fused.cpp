// One training epoch of the MLP stack on the CPU as one call: every minibatch's forward, loss
// (cross-entropy or StableMax's), hand-written backward, Grokfast's filter (when on) and AdamW
// update, with no per-op framework cost. Each member has its own AdamW settings (lr, betas,
// weight decay, eps), so jobs that differ only in those train as one stack; the rest is shared.
//
// On this model a step is ~9 MFLOP in three small matmuls; built from PyTorch ops it is ~20
// small kernels whose fixed costs (dispatch, allocation, OpenMP fork/join) take 3x the time of
// the arithmetic. Here the matmuls are BLAS calls on preallocated buffers and everything else is
// one loop per phase. The maths is that of MLPStack.backward + modadd.module.grokfast_ema + torch's
// fused AdamW kernel, and it is tested against autograd + torch.optim.AdamW.
//
// Threads: K >= 2 members run one per thread; a single member splits each step across the
// threads (rows of the minibatch, then hidden units), with a barrier between the phases.
//
// Layout (row-major): W_in (K, 2p, H), W_out (K, H, p), their moments and Grokfast EMAs alike;
// a, b, y (K, n), the epoch's order.

#include <ATen/core/Tensor.h>
#include <ATen/Parallel.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <vector>

// glibc's vector exp/erf (libmvec), which GCC calls from `omp simd` loops when told they exist;
// without them the softmax's exp is scalar and costs as much as a matmul.
#if defined(__x86_64__) && defined(__GLIBC__)
extern "C" {
#pragma omp declare simd notinbranch
float expf(float);
#pragma omp declare simd notinbranch
float erff(float);
}
#endif

extern "C" void sgemm_(const char*, const char*, const int*, const int*, const int*, const float*, const float*,
                       const int*, const float*, const int*, const float*, float*, const int*);

namespace {

enum Activation : int64_t { RELU = 0, QUADRATIC = 1, GELU = 2 };
enum Loss : int64_t { CROSS_ENTROPY = 0, STABLEMAX = 1 };  // modadd.config.LOSSES

// C = op(A) op(B) in BLAS's column-major terms: row-major X (r, c) is column-major X^T (c, r).
void gemm(char ta, char tb, int64_t m, int64_t n, int64_t k, const float* A, int64_t lda, const float* B,
          int64_t ldb, float* C, int64_t ldc) {
  const int m_ = m, n_ = n, k_ = k, lda_ = lda, ldb_ = ldb, ldc_ = ldc;
  const float one = 1.f, zero = 0.f;
  sgemm_(&ta, &tb, &m_, &n_, &k_, &one, A, &lda_, B, &ldb_, &zero, C, &ldc_);
}

// What every member shares.
struct Hyper {
  int64_t p, hidden, batch_size, n;
  float alpha, one_minus_alpha, lamb;  // Grokfast's, when `grokfast`
  bool grokfast;
  Activation activation;
  Loss loss;
};

// One member's AdamW settings, as float32 (what torch's fused kernel computes in for float32 weights).
struct AdamW {
  float lr, beta1, beta2, weight_decay, eps;
};

struct Member {
  float *W_in, *W_out, *m_in, *v_in, *m_out, *v_out, *e_in, *e_out;  // e_*: Grokfast's EMAs (null when off)
  const int64_t *a, *b, *y;
  AdamW opt;
};

// What an epoch adds up for one member: the minibatches' mean losses, right answers and rows whose
// softmax collapsed.
struct Sums {
  double loss = 0;
  int64_t correct = 0, collapsed = 0;
};

// One member's activations and gradients for one minibatch.
struct Work {
  std::vector<float> pre, hid, logits, d_hid, dW_in, dW_out;
  explicit Work(const Hyper& h)
      : pre(h.batch_size * h.hidden), hid(h.batch_size * h.hidden), logits(h.batch_size * h.p),
        d_hid(h.batch_size * h.hidden), dW_in(2 * h.p * h.hidden), dW_out(h.hidden * h.p) {}
};

// torch's fused AdamW (decoupled decay, lerp'd first moment, bias corrections) on n floats of one
// member, with its settings `o`.
void adamw(float* w, const float* g, float* m, float* v, int64_t n, const AdamW& o, double step) {
  const double bc1 = 1 - std::pow(double(o.beta1), step), bc2 = 1 - std::pow(double(o.beta2), step);
  const float step_size = o.lr / bc1, bc2_sqrt = std::sqrt(bc2), decay = 1 - o.lr * o.weight_decay;
  const float b1 = o.beta1, b2 = o.beta2, eps = o.eps;
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const float gi = g[i];
    const float mi = m[i] + (1 - b1) * (gi - m[i]);
    const float vi = b2 * v[i] + (1 - b2) * gi * gi;
    m[i] = mi;
    v[i] = vi;
    w[i] = w[i] * decay - step_size * mi / (std::sqrt(vi) / bc2_sqrt + eps);
  }
}

// Grokfast's EMA filter (Lee et al. 2024, their gradfilter_ema) on n floats of a gradient, before
// its AdamW step: ema = alpha ema + (1 - alpha) g, then g += lamb ema (modadd.module.grokfast_ema).
void grokfast(float* g, float* ema, int64_t n, const Hyper& h) {
  const float alpha = h.alpha, one_minus_alpha = h.one_minus_alpha, lamb = h.lamb;
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    ema[i] = alpha * ema[i] + one_minus_alpha * g[i];
    g[i] += lamb * ema[i];
  }
}

void activate(const float* pre, float* hid, int64_t n, Activation act) {
  if (act == RELU) {
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) hid[j] = pre[j] > 0 ? pre[j] : 0;
  } else if (act == QUADRATIC) {
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) hid[j] = pre[j] * pre[j];
  } else {
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) hid[j] = 0.5f * pre[j] * (1 + erff(pre[j] * float(M_SQRT1_2)));
  }
}

// d loss / d pre, in place of d loss / d hid.
void activation_backward(float* d, const float* pre, int64_t n, Activation act) {
  if (act == RELU) {
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) d[j] = pre[j] > 0 ? d[j] : 0;
  } else if (act == QUADRATIC) {
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) d[j] = d[j] * pre[j] * 2;
  } else {
    const float inv_sqrt_2pi = 0.5f * M_2_SQRTPI * M_SQRT1_2;
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) {
      const float x = pre[j], cdf = 0.5f * (1 + erff(x * float(M_SQRT1_2)));
      d[j] = d[j] * (cdf + x * inv_sqrt_2pi * expf(-0.5f * x * x));
    }
  }
}

// The largest logit of a row; adds whether it was right ("the right logit is the largest", as in
// MLPStack.backward: all-equal logits count as wrong).
float row_max(const float* l, int64_t p, int64_t target, int64_t& correct) {
  float mx = l[0], mn = l[0];
#pragma omp simd reduction(max : mx) reduction(min : mn)
  for (int64_t c = 1; c < p; ++c) {
    mx = std::max(mx, l[c]);
    mn = std::min(mn, l[c]);
  }
  correct += l[target] >= mx && l[target] > mn;
  return mx;
}

// Softmax cross-entropy of one row of logits of a minibatch of nb rows, replaced by its gradient.
// Adds the row's loss / nb, whether it was right and whether its softmax collapsed: sum exp(l - max)
// is exactly 1 in float32 (Prieto et al.; modadd.module.softmax_collapsed).
void softmax_row(float* l, int64_t p, int64_t target, int64_t nb, Sums& sums) {
  const float inv_batch = 1.f / nb;
  const float mx = row_max(l, p, target, sums.correct), right = l[target] - mx;
  float z = 0;
#pragma omp simd reduction(+ : z)
  for (int64_t c = 0; c < p; ++c) {
    l[c] = expf(l[c] - mx);
    z += l[c];
  }
  sums.collapsed += z == 1;
  sums.loss += (std::log(z) - right) * inv_batch;
  const float scale = inv_batch / z;
#pragma omp simd
  for (int64_t c = 0; c < p; ++c) l[c] *= scale;
  l[target] -= inv_batch;
}

// StableMax's s(x) = x + 1 (x >= 0), 1 / (1 - x) (x < 0), and its sum over a row: in float64, as
// modadd.module.log_stablemax computes them.
double stable(double x) {
  return x < 0 ? 1 / (1 - x) : x + 1;
}

double stable_sum(const float* l, int64_t p) {
  double total = 0;
#pragma omp simd reduction(+ : total)
  for (int64_t c = 0; c < p; ++c) total += stable(l[c]);
  return total;
}

// StableMax cross-entropy of one row, as softmax_row: the loss is log S - log s_y with S = sum s,
// and d/dl_c = s'(l_c) / S - [c = y] s'(l_y) / s_y, with s' = s^2 (l < 0), 1. The softmax collapse
// it counts is still softmax's (what cross-entropy would see), for which it sums exp once more.
void stablemax_row(float* l, int64_t p, int64_t target, int64_t nb, Sums& sums) {
  const float mx = row_max(l, p, target, sums.correct);
  float z = 0;
#pragma omp simd reduction(+ : z)
  for (int64_t c = 0; c < p; ++c) z += expf(l[c] - mx);
  sums.collapsed += z == 1;
  const double total = stable_sum(l, p), s_y = stable(l[target]), ds_y = l[target] < 0 ? s_y * s_y : 1;
  sums.loss -= std::log(s_y / total) / nb;
  const double scale = 1 / (total * nb);
#pragma omp simd
  for (int64_t c = 0; c < p; ++c) {
    const double s = stable(l[c]);
    l[c] = (l[c] < 0 ? s * s : 1) * scale;
  }
  l[target] = (ds_y / total - ds_y / s_y) / nb;
}

// All minibatches of one member's epoch. Thread `t` of `T` (T > 1: all threads work on this
// member, each on its share of every phase, synchronised by barriers). Adds to `sums`.
void train_member(const Member& m, Work& w, const Hyper& h, double step, int t, int T, Sums& sums) {
  const int64_t p = h.p, H = h.hidden, two_p = 2 * p;
  const int64_t h0 = H * t / T, h1 = H * (t + 1) / T;           // this thread's hidden units
  const int64_t w0 = two_p * t / T, w1 = two_p * (t + 1) / T;   // and rows of W_in
  auto sync = [T] {
    if (T > 1) {
#pragma omp barrier
    }
  };
  for (int64_t start = 0; start < h.n; start += h.batch_size) {
    const int64_t nb = std::min(h.batch_size, h.n - start), r0 = nb * t / T, r1 = nb * (t + 1) / T;
    const int64_t *a = m.a + start, *b = m.b + start, *y = m.y + start;
    // forward and loss on this thread's rows: the first layer is a gather of two rows of W_in
    for (int64_t i = r0; i < r1; ++i) {
      const float *ra = m.W_in + a[i] * H, *rb = m.W_in + (p + b[i]) * H;
      float* pre = w.pre.data() + i * H;
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) pre[j] = ra[j] + rb[j];
      activate(pre, w.hid.data() + i * H, H, h.activation);
    }
    gemm('N', 'N', p, r1 - r0, H, m.W_out, p, w.hid.data() + r0 * H, H, w.logits.data() + r0 * p, p);
    const auto loss_row = h.loss == STABLEMAX ? stablemax_row : softmax_row;
    for (int64_t i = r0; i < r1; ++i) loss_row(w.logits.data() + i * p, p, y[i], nb, sums);
    sync();
    // dW_out = hid^T d_logits for this thread's hidden units; d_hid = d_logits W_out^T for its rows
    gemm('N', 'T', p, h1 - h0, nb, w.logits.data(), p, w.hid.data() + h0, H, w.dW_out.data() + h0 * p, p);
    gemm('T', 'N', H, r1 - r0, p, m.W_out, p, w.logits.data() + r0 * p, p, w.d_hid.data() + r0 * H, H);
    activation_backward(w.d_hid.data() + r0 * H, w.pre.data() + r0 * H, (r1 - r0) * H, h.activation);
    sync();
    // dW_in: each row's d_pre added to the two rows of W_in it gathered from; then Grokfast and
    // AdamW. Each thread owns a block of W_in's rows and of W_out's rows, so no two threads write
    // one float
    step += 1;
    std::fill(w.dW_in.data() + w0 * H, w.dW_in.data() + w1 * H, 0.f);
    for (int64_t i = 0; i < nb; ++i) {
      const float* d = w.d_hid.data() + i * H;
      for (const int64_t row : {a[i], p + b[i]}) {
        if (row < w0 || row >= w1) continue;
        float* g = w.dW_in.data() + row * H;
#pragma omp simd
        for (int64_t j = 0; j < H; ++j) g[j] += d[j];
      }
    }
    if (h.grokfast) {
      grokfast(w.dW_in.data() + w0 * H, m.e_in + w0 * H, (w1 - w0) * H, h);
      grokfast(w.dW_out.data() + h0 * p, m.e_out + h0 * p, (h1 - h0) * p, h);
    }
    adamw(m.W_in + w0 * H, w.dW_in.data() + w0 * H, m.m_in + w0 * H, m.v_in + w0 * H, (w1 - w0) * H, m.opt, step);
    adamw(m.W_out + h0 * p, w.dW_out.data() + h0 * p, m.m_out + h0 * p, m.v_out + h0 * p, (h1 - h0) * p, m.opt,
          step);
    sync();
  }
}

float* f32(const at::Tensor& t, int64_t k) {
  return t.data_ptr<float>() + k * t.stride(0);
}

// Trains every member for one epoch in place (weights, AdamW moments and, given `ema_in` and
// `ema_out`, Grokfast's EMAs with its `alpha` and `lamb`); `step` is the AdamW step count before the
// epoch; `lr`, `beta1`, `beta2`, `weight_decay` and `eps` are each member's AdamW settings, (K,) float64.
// Returns the sum over minibatches of the mean loss (float64), the number of right answers and of rows
// whose softmax collapsed (int64), all (K,).
std::vector<at::Tensor> train_epoch(at::Tensor W_in, at::Tensor W_out, at::Tensor m_in, at::Tensor v_in,
                                    at::Tensor m_out, at::Tensor v_out, const std::optional<at::Tensor>& ema_in,
                                    const std::optional<at::Tensor>& ema_out, double step, const at::Tensor& a,
                                    const at::Tensor& b, const at::Tensor& y, int64_t batch_size, const at::Tensor& lr,
                                    const at::Tensor& beta1, const at::Tensor& beta2, const at::Tensor& weight_decay,
                                    const at::Tensor& eps, double alpha, double lamb, int64_t activation,
                                    int64_t loss_kind) {
  const bool grokfast = ema_in.has_value();
  TORCH_CHECK(grokfast == ema_out.has_value(), "train_epoch: give both Grokfast EMAs or neither");
  std::vector<const at::Tensor*> floats{&W_in, &W_out, &m_in, &v_in, &m_out, &v_out};
  if (grokfast) floats.insert(floats.end(), {&*ema_in, &*ema_out});
  for (const at::Tensor* t : floats)
    TORCH_CHECK(t->is_contiguous() && t->scalar_type() == at::kFloat && t->device().is_cpu(),
                "train_epoch: weights, moments and EMAs must be contiguous float32 CPU tensors");
  for (const at::Tensor* t : {&a, &b, &y})
    TORCH_CHECK(t->is_contiguous() && t->scalar_type() == at::kLong && t->device().is_cpu(),
                "train_epoch: a, b, y must be contiguous int64 CPU tensors");
  TORCH_CHECK(activation >= RELU && activation <= GELU, "train_epoch: unknown activation ", activation);
  TORCH_CHECK(loss_kind >= CROSS_ENTROPY && loss_kind <= STABLEMAX, "train_epoch: unknown loss ", loss_kind);
  const int64_t K = W_in.size(0);
  for (const at::Tensor* t : {&lr, &beta1, &beta2, &weight_decay, &eps})
    TORCH_CHECK(t->dim() == 1 && t->size(0) == K && t->scalar_type() == at::kDouble && t->device().is_cpu(),
                "train_epoch: lr, beta1, beta2, weight_decay and eps must be (K,) = (", K,
                ",) float64 CPU tensors, one value per member; got ", t->sizes(), " ", t->scalar_type(), " on ",
                t->device());
  const Hyper h{W_out.size(2), W_in.size(2), batch_size, a.size(1), float(alpha), float(1 - alpha), float(lamb),
                grokfast, Activation(activation), Loss(loss_kind)};
  auto setting = [](const at::Tensor& t, int64_t k) { return float(t.data_ptr<double>()[k * t.stride(0)]); };
  auto member = [&](int64_t k) {
    return Member{f32(W_in, k), f32(W_out, k), f32(m_in, k), f32(v_in, k), f32(m_out, k), f32(v_out, k),
                  grokfast ? f32(*ema_in, k) : nullptr, grokfast ? f32(*ema_out, k) : nullptr,
                  a.data_ptr<int64_t>() + k * h.n, b.data_ptr<int64_t>() + k * h.n, y.data_ptr<int64_t>() + k * h.n,
                  AdamW{setting(lr, k), setting(beta1, k), setting(beta2, k), setting(weight_decay, k),
                        setting(eps, k)}};
  };
  const int T = std::max(1, at::get_num_threads());
  std::vector<Sums> sums(K * T);
  if (K == 1 && T > 1) {
    Work shared(h);
    const Member m = member(0);
#pragma omp parallel num_threads(T)
    train_member(m, shared, h, step, omp_get_thread_num(), omp_get_num_threads(), sums[omp_get_thread_num()]);
  } else {
#pragma omp parallel num_threads(std::min<int64_t>(T, K))
    {
      Work own(h);
#pragma omp for schedule(static)
      for (int64_t k = 0; k < K; ++k) train_member(member(k), own, h, step, 0, 1, sums[k]);
    }
  }
  auto loss_sum = at::zeros({K}, at::kDouble);
  auto n_correct = at::zeros({K}, at::kLong);
  auto n_collapsed = at::zeros({K}, at::kLong);
  for (int64_t i = 0; i < K * T; ++i) {
    loss_sum.data_ptr<double>()[i % K] += sums[i].loss;
    n_correct.data_ptr<int64_t>()[i % K] += sums[i].correct;
    n_collapsed.data_ptr<int64_t>()[i % K] += sums[i].collapsed;
  }
  return {loss_sum, n_correct, n_collapsed};
}

// Mean loss (float64; cross-entropy or StableMax's) and right answers (int64, "the first largest
// logit is the right one", as argmax) of every member on a split `a, b, y: (n,)`: forward only, in
// blocks of rows on each thread's own buffers, so no (K, n, p) tensor of logits is ever made. Both (K,).
std::vector<at::Tensor> evaluate(const at::Tensor& W_in, const at::Tensor& W_out, const at::Tensor& a,
                                 const at::Tensor& b, const at::Tensor& y, int64_t activation, int64_t loss_kind) {
  for (const at::Tensor* t : {&W_in, &W_out})
    TORCH_CHECK(t->is_contiguous() && t->scalar_type() == at::kFloat && t->device().is_cpu(),
                "evaluate: weights must be contiguous float32 CPU tensors");
  for (const at::Tensor* t : {&a, &b, &y})
    TORCH_CHECK(t->is_contiguous() && t->scalar_type() == at::kLong && t->device().is_cpu() && t->dim() == 1,
                "evaluate: a, b, y must be contiguous 1-d int64 CPU tensors");
  TORCH_CHECK(activation >= RELU && activation <= GELU, "evaluate: unknown activation ", activation);
  TORCH_CHECK(loss_kind >= CROSS_ENTROPY && loss_kind <= STABLEMAX, "evaluate: unknown loss ", loss_kind);
  constexpr int64_t BLOCK = 128;
  const int64_t K = W_in.size(0), H = W_in.size(2), p = W_out.size(2), n = a.size(0);
  const int64_t blocks = (n + BLOCK - 1) / BLOCK;
  const int64_t *ia = a.data_ptr<int64_t>(), *ib = b.data_ptr<int64_t>(), *iy = y.data_ptr<int64_t>();
  std::vector<double> loss(K * blocks, 0);
  std::vector<int64_t> correct(K * blocks, 0);
#pragma omp parallel num_threads(std::max(1, at::get_num_threads()))
  {
    std::vector<float> hid(BLOCK * H), logits(BLOCK * p);
#pragma omp for schedule(static) collapse(2)
    for (int64_t k = 0; k < K; ++k) {
      for (int64_t blk = 0; blk < blocks; ++blk) {
        const float *Wi = f32(W_in, k), *Wo = f32(W_out, k);
        const int64_t r0 = blk * BLOCK, nb = std::min(BLOCK, n - r0);
        for (int64_t i = 0; i < nb; ++i) {
          const float *ra = Wi + ia[r0 + i] * H, *rb = Wi + (p + ib[r0 + i]) * H;
          float* h = hid.data() + i * H;
#pragma omp simd
          for (int64_t j = 0; j < H; ++j) h[j] = ra[j] + rb[j];
          activate(h, h, H, Activation(activation));
        }
        gemm('N', 'N', p, nb, H, Wo, p, hid.data(), H, logits.data(), p);
        double block_loss = 0;
        int64_t block_correct = 0;
        for (int64_t i = 0; i < nb; ++i) {
          const float* l = logits.data() + i * p;
          const int64_t target = iy[r0 + i];
          float mx = l[0];
#pragma omp simd reduction(max : mx)
          for (int64_t c = 1; c < p; ++c) mx = std::max(mx, l[c]);
          if (loss_kind == STABLEMAX) {
            block_loss -= std::log(stable(l[target]) / stable_sum(l, p));
          } else {
            float z = 0;
#pragma omp simd reduction(+ : z)
            for (int64_t c = 0; c < p; ++c) z += expf(l[c] - mx);
            block_loss += std::log(z) - (l[target] - mx);
          }
          block_correct += std::find(l, l + p, mx) - l == target;
        }
        loss[k * blocks + blk] = block_loss;
        correct[k * blocks + blk] = block_correct;
      }
    }
  }
  auto mean_loss = at::zeros({K}, at::kDouble);
  auto n_correct = at::zeros({K}, at::kLong);
  for (int64_t i = 0; i < K * blocks; ++i) {
    mean_loss.data_ptr<double>()[i / blocks] += loss[i] / n;
    n_correct.data_ptr<int64_t>()[i / blocks] += correct[i];
  }
  return {mean_loss, n_correct};
}

}  // namespace

TORCH_LIBRARY(modadd, m) {
  m.def(
      "train_epoch(Tensor(a!) W_in, Tensor(b!) W_out, Tensor(c!) m_in, Tensor(d!) v_in, Tensor(e!) m_out, "
      "Tensor(f!) v_out, Tensor(g!)? ema_in, Tensor(h!)? ema_out, float step, Tensor a, Tensor b, Tensor y, "
      "int batch_size, Tensor lr, Tensor beta1, Tensor beta2, Tensor weight_decay, Tensor eps, float alpha, "
      "float lamb, int activation, int loss) -> Tensor[]",
      &train_epoch);
  m.def("evaluate(Tensor W_in, Tensor W_out, Tensor a, Tensor b, Tensor y, int activation, int loss) -> Tensor[]",
        &evaluate);
}
