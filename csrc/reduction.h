// The reductions of the loss ops, defined once for every C++ backend. The op schemas take the
// name as a string (the Python API's word); each backend parses it here.
#pragma once

#include <c10/util/Exception.h>
#include <c10/util/string_view.h>

#include <string>

namespace reidfast {

enum class Reduction : int { kMean = 0, kSum = 1, kBalanced = 2 };

// `op` names the operator in the error message.
inline Reduction parse_reduction(c10::string_view name, const char* op) {
  if (name == "mean") return Reduction::kMean;
  if (name == "sum") return Reduction::kSum;
  if (name == "balanced") return Reduction::kBalanced;
  TORCH_CHECK_VALUE(false, op, ": reduction must be 'mean', 'sum' or 'balanced', got '",
                    std::string(name), "'");
}

}  // namespace reidfast
