// Autograd of reidfast::adaptive_margin_forward, in C++ for every device kernel registered under
// the op (CPU and CUDA). The forward computes the loss's gradient with respect to x together with
// the loss (the hinge terms are known there; see csrc/cpu/adaptive_margin.cpp), so backward only
// scales that kept gradient by the incoming one. The Triton forward is a separate op with the same
// rule, registered in Python.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <string>
#include <tuple>

namespace reidfast {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using Forward = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

Forward call_forward(const at::Tensor& x, const at::Tensor& labels, double mu, double gamma,
                     const std::string& reduction, bool compute_grad) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("reidfast::adaptive_margin_forward", "")
                             .typed<Forward(const at::Tensor&, const at::Tensor&, double, double,
                                            c10::string_view, bool)>();
  return op.call(x, labels, mu, gamma, reduction, compute_grad);
}

// Whether t is a plain (not traced or functionalised) CPU tensor whose value can be read.
bool readable_on_host(const at::Tensor& t) {
  return t.device().is_cpu() && !t.key_set().has(c10::DispatchKey::Python) &&
         !t.key_set().has(c10::DispatchKey::Functionalize);
}

class AdaptiveMarginFunction : public torch::autograd::Function<AdaptiveMarginFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x,
                               const at::Tensor& labels, double mu, double gamma,
                               const std::string& reduction, bool compute_grad) {
    // Below autograd: the device kernel, not this function again.
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [loss, margins, grad_x] = call_forward(x, labels, mu, gamma, reduction, compute_grad);
    ctx->mark_non_differentiable({margins, grad_x});
    ctx->set_materialize_grads(false);
    ctx->saved_data["compute_grad"] = compute_grad;
    ctx->save_for_backward({grad_x});
    return {loss, margins, grad_x};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    variable_list result(6);
    const at::Tensor& grad_loss = grads[0];
    if (!grad_loss.defined()) return result;
    // The kept gradient is a number, not a function of x: a graph built through it would
    // silently give zero second derivatives.
    TORCH_CHECK(!at::GradMode::is_enabled(),
                "adaptive_margin_loss: double backward (create_graph=True) is not supported by "
                "the fused backends; use backend='reference' for higher-order gradients");
    TORCH_CHECK(ctx->saved_data["compute_grad"].toBool(),
                "adaptive_margin_loss: the forward ran with compute_grad=False, so it kept no "
                "gradient; call the op with compute_grad=True when x needs a gradient");
    const at::Tensor grad_x = ctx->get_saved_variables()[0];
    // loss.backward()'s unit gradient: the kept gradient is the result, without a copy
    // (autograd hands it to x.grad, or clones it when the graph is retained).
    if (readable_on_host(grad_loss) && grad_loss.item<double>() == 1.0) {
      result[0] = grad_x;
    } else {
      result[0] = grad_x * grad_loss.to(grad_x.scalar_type());
    }
    return result;
  }
};

Forward adaptive_margin_forward_autograd(const at::Tensor& x, const at::Tensor& labels,
                                         double mu, double gamma, c10::string_view reduction,
                                         bool compute_grad) {
  const variable_list out = AdaptiveMarginFunction::apply(x, labels, mu, gamma,
                                                          std::string(reduction), compute_grad);
  return {out[0], out[1], out[2]};
}

}  // namespace

TORCH_LIBRARY_IMPL(reidfast, Autograd, m) {
  m.impl("adaptive_margin_forward", &adaptive_margin_forward_autograd);
}

}  // namespace reidfast
