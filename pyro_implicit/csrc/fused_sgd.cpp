// One sweep over rows of a hypernetwork's output layer theta (rows x h): the hidden layer's
// gradient theta^T g (before the update) and SGD's step on theta and its momentum with gradient
// g h^T + weight_decay * theta, the same update as torch.optim.SGD. Memory-bound: theta and the
// momentum are each read and written once, the least an SGD step can do. Serial on purpose:
// callers split theta into row ranges on their own threads (the GIL is released here), so no
// second OpenMP runtime competes with torch's.
#include <torch/extension.h>

namespace {

template <typename T>
void sweep(T* theta, T* momentum, const T* g, const T* h, T* acc, int64_t rows, int64_t width,
           T lr, T mu, T dampening, T weight_decay, bool nesterov, bool first) {
  for (int64_t r = 0; r < rows; ++r) {
    const T gr = g[r];
    T* t = theta + r * width;
    T* m = momentum == nullptr ? nullptr : momentum + r * width;
    for (int64_t k = 0; k < width; ++k) {
      const T old = t[k];
      acc[k] += old * gr;
      const T d = gr * h[k] + weight_decay * old;
      T step = d;
      if (m != nullptr) {
        const T buf = first ? d : mu * m[k] + (1 - dampening) * d;
        m[k] = buf;
        step = nesterov ? d + mu * buf : buf;
      }
      t[k] = old - lr * step;
    }
  }
}

}  // namespace

// Returns theta^T g (width,); updates theta and momentum (None: SGD without momentum).
torch::Tensor fused_sgd(torch::Tensor theta, std::optional<torch::Tensor> momentum,
                        torch::Tensor g, torch::Tensor h, double lr, double mu,
                        double dampening, double weight_decay, bool nesterov, bool first) {
  TORCH_CHECK(theta.dim() == 2 && theta.is_contiguous() && theta.device().is_cpu(),
              "theta must be a contiguous 2-d CPU tensor");
  TORCH_CHECK(g.is_contiguous() && g.numel() == theta.size(0) && g.dtype() == theta.dtype(),
              "g must have one entry per row of theta, in theta's dtype");
  TORCH_CHECK(h.is_contiguous() && h.numel() == theta.size(1) && h.dtype() == theta.dtype(),
              "h must have one entry per column of theta, in theta's dtype");
  const bool has_momentum = momentum.has_value();
  TORCH_CHECK(!has_momentum || (momentum->is_contiguous() && momentum->sizes() == theta.sizes()
                                && momentum->dtype() == theta.dtype()),
              "momentum must be contiguous and shaped like theta, in theta's dtype");
  auto acc = torch::zeros({theta.size(1)}, theta.options());
  AT_DISPATCH_FLOATING_TYPES(theta.scalar_type(), "fused_sgd", [&] {
    sweep<scalar_t>(theta.data_ptr<scalar_t>(),
                    has_momentum ? momentum->data_ptr<scalar_t>() : nullptr,
                    g.data_ptr<scalar_t>(), h.data_ptr<scalar_t>(), acc.data_ptr<scalar_t>(),
                    theta.size(0), theta.size(1), static_cast<scalar_t>(lr),
                    static_cast<scalar_t>(mu), static_cast<scalar_t>(dampening),
                    static_cast<scalar_t>(weight_decay), nesterov, first);
  });
  return acc;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("fused_sgd", &fused_sgd, "hidden gradient and SGD step of hypernetwork output rows",
        py::call_guard<py::gil_scoped_release>());
}
