// Autograd of reidfast::triplet_select_forward and the fused reidfast::triplet_loss, in C++ for
// every device kernel registered under the selection op (CPU and CUDA), so that a call costs no
// Python and libtorch users get gradients too. The gradient flows through the selected pairs
// only: triplet_select_backward takes the incoming gradients of the selected distances and the
// forward's indices (see csrc/cpu/triplet_select.cpp for the formula). The Triton forward is a
// separate op with the same rule, registered in Python.
//
// triplet_loss is the selection and the loss on it (reidfast/ops/triplet_select.py's
// triplet_loss, whose plain-PyTorch composition is its specification) as one autograd node: its
// backward turns the loss's gradient into the selected distances' gradients with ATen's own
// backward formulas of relu and softplus (so NaN propagates as in the composition) and calls
// triplet_select_backward once.
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <ATen/ATen.h>

#include <string>
#include <tuple>

namespace reidfast {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using Selection = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

Selection call_forward(const at::Tensor& x, const at::Tensor& labels, const at::Tensor& ref,
                       const at::Tensor& ref_labels, bool self_reference, int64_t k, int64_t p,
                       bool squared) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("reidfast::triplet_select_forward", "")
          .typed<Selection(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                           const at::Tensor&, bool, int64_t, int64_t, bool)>();
  return op.call(x, labels, ref, ref_labels, self_reference, k, p, squared);
}

std::tuple<at::Tensor, at::Tensor> call_backward(
    const at::Tensor& grad_pos, const at::Tensor& grad_neg, const at::Tensor& x,
    const at::Tensor& ref, const at::Tensor& pos_dist, const at::Tensor& neg_dist,
    const at::Tensor& pos_index, const at::Tensor& neg_index, bool self_reference, bool squared,
    bool ref_grad) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("reidfast::triplet_select_backward", "")
          .typed<std::tuple<at::Tensor, at::Tensor>(
              const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
              const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, bool,
              bool, bool)>();
  return op.call(grad_pos, grad_neg, x, ref, pos_dist, neg_dist, pos_index, neg_index,
                 self_reference, squared, ref_grad);
}

constexpr char kDoubleBackwardError[] =
    "triplet_select: double backward (create_graph=True) is not supported by the fused backends; "
    "use backend='reference' for higher-order gradients";

class TripletSelectFunction : public torch::autograd::Function<TripletSelectFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x,
                               const at::Tensor& labels, const at::Tensor& ref,
                               const at::Tensor& ref_labels, bool self_reference, int64_t k,
                               int64_t p, bool squared) {
    // Below autograd: the device kernel, not this function again.
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [pos_dist, neg_dist, pos_index, neg_index] =
        call_forward(x, labels, ref, ref_labels, self_reference, k, p, squared);
    ctx->mark_non_differentiable({pos_index, neg_index});
    ctx->set_materialize_grads(false);
    ctx->saved_data["self_reference"] = self_reference;
    ctx->saved_data["squared"] = squared;
    ctx->save_for_backward({x, ref, pos_dist, neg_dist, pos_index, neg_index});
    return {pos_dist, neg_dist, pos_index, neg_index};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list none(8);
    const at::Tensor &grad_pos = grads[0], &grad_neg = grads[1];
    if (!grad_pos.defined() && !grad_neg.defined()) return none;
    // The gradient is computed as numbers through the chosen indices, not as a function of the
    // inputs: a graph built through it would silently give zero second derivatives.
    TORCH_CHECK(!at::GradMode::is_enabled(), kDoubleBackwardError);
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &ref = saved[1], &pos_dist = saved[2], &neg_dist = saved[3];
    const bool self_reference = ctx->saved_data["self_reference"].toBool();
    // A frozen memory bank gets no [M, D] gradient: the backward op neither allocates nor
    // computes it. Against itself, ref is x and the partners' terms are in grad_x.
    const bool ref_grad = !self_reference && ctx->needs_input_grad(2);
    auto [grad_x, grad_ref] = call_backward(
        grad_pos.defined() ? grad_pos : at::zeros_like(pos_dist),
        grad_neg.defined() ? grad_neg : at::zeros_like(neg_dist), x, ref, pos_dist, neg_dist,
        saved[4], saved[5], self_reference, ctx->saved_data["squared"].toBool(), ref_grad);
    variable_list result = none;
    result[0] = grad_x;
    if (ref_grad) result[2] = grad_ref;
    return result;
  }
};

Selection triplet_select_forward_autograd(const at::Tensor& x, const at::Tensor& labels,
                                          const at::Tensor& ref, const at::Tensor& ref_labels,
                                          bool self_reference, int64_t k, int64_t p,
                                          bool squared) {
  const variable_list out =
      TripletSelectFunction::apply(x, labels, ref, ref_labels, self_reference, k, p, squared);
  return {out[0], out[1], out[2], out[3]};
}

// softplus's default beta and threshold, as F.softplus.
constexpr double kSoftplusBeta = 1.0, kSoftplusThreshold = 20.0;

struct TripletLoss {
  at::Tensor loss;                                     // 0-d or [N], x's dtype
  at::Tensor pos_dist, neg_dist, pos_index, neg_index;  // the selection
  at::Tensor z;                                        // [N] margin + d_ap - d_an, acc dtype
};

TripletLoss triplet_loss_of(const at::Tensor& x, const at::Tensor& labels, const at::Tensor& ref,
                            const at::Tensor& ref_labels, bool self_reference, int64_t k,
                            int64_t p, bool squared, double margin, bool soft,
                            c10::string_view reduction) {
  TORCH_CHECK_VALUE(reduction == "mean" || reduction == "sum" || reduction == "none",
                    "triplet_loss: reduction must be 'mean', 'sum' or 'none', got '", reduction,
                    "'");
  TripletLoss out;
  std::tie(out.pos_dist, out.neg_dist, out.pos_index, out.neg_index) =
      call_forward(x, labels, ref, ref_labels, self_reference, k, p, squared);
  const auto acc_type = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  out.z = (out.pos_dist.to(acc_type) - out.neg_dist.to(acc_type)).add_(margin);
  const at::Tensor losses =
      soft ? at::softplus(out.z, kSoftplusBeta, kSoftplusThreshold) : at::relu(out.z);
  const at::Tensor loss = reduction == "mean"  ? losses.mean()
                          : reduction == "sum" ? losses.sum()
                                               : losses;
  out.loss = loss.to(x.scalar_type());
  return out;
}

// Without autograd (inference mode, or below the autograd kernel): the loss only.
at::Tensor triplet_loss_forward_only(const at::Tensor& x, const at::Tensor& labels,
                                     const at::Tensor& ref, const at::Tensor& ref_labels,
                                     bool self_reference, int64_t k, int64_t p, bool squared,
                                     double margin, bool soft, c10::string_view reduction) {
  return triplet_loss_of(x, labels, ref, ref_labels, self_reference, k, p, squared, margin, soft,
                         reduction)
      .loss;
}

class TripletLossFunction : public torch::autograd::Function<TripletLossFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x,
                               const at::Tensor& labels, const at::Tensor& ref,
                               const at::Tensor& ref_labels, bool self_reference, int64_t k,
                               int64_t p, bool squared, double margin, bool soft,
                               const std::string& reduction) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    const TripletLoss out =
        triplet_loss_of(x, labels, ref, ref_labels, self_reference, k, p, squared, margin, soft,
                        reduction);
    ctx->saved_data["self_reference"] = self_reference;
    ctx->saved_data["squared"] = squared;
    ctx->saved_data["soft"] = soft;
    ctx->saved_data["reduction"] = reduction;
    ctx->save_for_backward({x, ref, out.pos_dist, out.neg_dist, out.pos_index, out.neg_index,
                            out.z});
    return {out.loss};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    variable_list result(11);
    if (!grads[0].defined()) return result;
    TORCH_CHECK(!at::GradMode::is_enabled(), kDoubleBackwardError);
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &ref = saved[1], &pos_dist = saved[2], &neg_dist = saved[3];
    const at::Tensor& z = saved[6];
    const std::string reduction = ctx->saved_data["reduction"].toStringRef();
    // d loss / d losses, [N] in the accumulation dtype.
    at::Tensor grad_losses = grads[0].to(z.scalar_type());
    if (reduction == "mean") grad_losses = grad_losses.div(z.size(0));
    grad_losses = grad_losses.expand_as(z);
    const at::Tensor grad_z =
        ctx->saved_data["soft"].toBool()
            ? at::softplus_backward(grad_losses, z, kSoftplusBeta, kSoftplusThreshold)
            : at::threshold_backward(grad_losses, z, 0);
    const bool self_reference = ctx->saved_data["self_reference"].toBool();
    const bool ref_grad = !self_reference && ctx->needs_input_grad(2);
    const at::Tensor grad_pos = grad_z.to(pos_dist.scalar_type());
    auto [grad_x, grad_ref] = call_backward(grad_pos, grad_pos.neg(), x, ref, pos_dist, neg_dist,
                                            saved[4], saved[5], self_reference,
                                            ctx->saved_data["squared"].toBool(), ref_grad);
    result[0] = grad_x;
    if (ref_grad) result[2] = grad_ref;
    return result;
  }
};

at::Tensor triplet_loss_autograd(const at::Tensor& x, const at::Tensor& labels,
                                 const at::Tensor& ref, const at::Tensor& ref_labels,
                                 bool self_reference, int64_t k, int64_t p, bool squared,
                                 double margin, bool soft, c10::string_view reduction) {
  return TripletLossFunction::apply(x, labels, ref, ref_labels, self_reference, k, p, squared,
                                    margin, soft, std::string(reduction))[0];
}

}  // namespace

TORCH_LIBRARY_IMPL(reidfast, Autograd, m) {
  m.impl("triplet_select_forward", &triplet_select_forward_autograd);
  m.impl("triplet_loss", &triplet_loss_autograd);
}

TORCH_LIBRARY_IMPL(reidfast, CompositeExplicitAutograd, m) {
  m.impl("triplet_loss", &triplet_loss_forward_only);
}

}  // namespace reidfast
