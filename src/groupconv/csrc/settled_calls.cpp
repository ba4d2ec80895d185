// Settled conv calls in C++ (see settled_calls.h).
//
// Why C++: in Python, a settled call still paid about 10 us before torch's conv (building the signature tuple, the
// cache lookup, the tests of the global state, the runner's frames), most of a small layer's time: torch's own conv
// of a 1x8x8x8 input takes 60 us. Here the signature is read straight from the tensors and the argument objects,
// looked up in a hash table, and a call settled on torch's conv runs it without going back to Python.

#include "settled_calls.h"

#include <c10/core/impl/LocalDispatchKeySet.h>
#include <c10/core/impl/TorchDispatchModeTLS.h>
#include <torch/csrc/autograd/python_variable.h>
#include <torch/csrc/jit/frontend/tracer.h>

#include <array>
#include <cstring>
#include <list>
#include <optional>
#include <unordered_map>

namespace {

using Key = std::vector<int64_t>;

struct KeyHash {
  size_t operator()(const Key& key) const noexcept {
    uint64_t hash = 0x9e3779b97f4a7c15ull;
    for (int64_t value : key) {
      hash ^= static_cast<uint64_t>(value) + 0x9e3779b97f4a7c15ull + (hash << 6) + (hash >> 2);
    }
    return static_cast<size_t>(hash);
  }
};

// Tags that keep the kinds of argument apart in a key: stride=2 and stride=(2,) are different calls.
constexpr int64_t kInt = 0, kName = 1, kSequence = 2, kNoBias = 3;
constexpr std::array<const char*, 3> kPaddingNames = {"same", "valid", "full"};

bool append_int(Key& key, PyObject* value) {
  if (!PyLong_CheckExact(value)) return false;  // (a bool is an int subclass: it never finds an int's path)
  int overflow = 0;
  const long long number = PyLong_AsLongLongAndOverflow(value, &overflow);
  if (overflow != 0 || (number == -1 && PyErr_Occurred())) {
    PyErr_Clear();
    return false;
  }
  key.push_back(number);
  return true;
}

// An argument exactly as given: an int, one of the padding names, or a tuple or list of ints (the two alike, as the
// argument checks treat them alike). False for anything else.
bool append_argument(Key& key, PyObject* value) {
  if (PyLong_CheckExact(value)) {
    key.push_back(kInt);
    return append_int(key, value);
  }
  if (PyUnicode_CheckExact(value)) {
    const char* text = PyUnicode_AsUTF8(value);
    if (text == nullptr) {
      PyErr_Clear();
      return false;
    }
    for (size_t i = 0; i < kPaddingNames.size(); ++i) {
      if (std::strcmp(text, kPaddingNames[i]) == 0) {
        key.push_back(kName);
        key.push_back(static_cast<int64_t>(i));
        return true;
      }
    }
    return false;
  }
  if (PyTuple_CheckExact(value) || PyList_CheckExact(value)) {
    const Py_ssize_t size = PySequence_Fast_GET_SIZE(value);
    PyObject** items = PySequence_Fast_ITEMS(value);
    key.push_back(kSequence);
    key.push_back(size);
    for (Py_ssize_t i = 0; i < size; ++i) {
      if (!append_int(key, items[i])) return false;
    }
    return true;
  }
  return false;
}

// torch.Tensor or torch.nn.Parameter exactly: a subclass may change what the conv does.
const at::Tensor* plain_tensor(PyObject* object) {
  return THPVariable_CheckExact(object) ? &THPVariable_Unpack(object) : nullptr;
}

void append_tensor(Key& key, const at::Tensor& tensor, bool grad_mode) {
  key.push_back(tensor.dim());
  key.insert(key.end(), tensor.sizes().begin(), tensor.sizes().end());
  key.insert(key.end(), tensor.strides().begin(), tensor.strides().end());  // (the layout)
  key.push_back(static_cast<int64_t>(tensor.scalar_type()));
  key.push_back(static_cast<int64_t>(tensor.device().type()));
  key.push_back(tensor.device().index());
  key.push_back(grad_mode && tensor.requires_grad());
}

struct Call {
  const at::Tensor* input;
  const at::Tensor* weight;
  const at::Tensor* bias;  // nullptr for None
  Key key;
};

std::optional<Call> read_call(int64_t spatial_dims, py::handle input, py::handle weight, py::handle bias,
                              py::handle stride, py::handle padding, py::handle dilation, py::handle groups,
                              py::handle shuffle_groups) {
  Call call{plain_tensor(input.ptr()), plain_tensor(weight.ptr()), nullptr, {}};
  if (call.input == nullptr || call.weight == nullptr) return std::nullopt;
  if (!bias.is_none()) {
    call.bias = plain_tensor(bias.ptr());
    if (call.bias == nullptr) return std::nullopt;
  }
  for (const at::Tensor* tensor : {call.input, call.weight, call.bias}) {
    if (tensor != nullptr && tensor->layout() != at::kStrided) return std::nullopt;
  }
  const bool grad_mode = at::GradMode::is_enabled();
  Key& key = call.key;
  key.reserve(64);
  key.push_back(spatial_dims);
  append_tensor(key, *call.input, grad_mode);
  append_tensor(key, *call.weight, grad_mode);
  if (call.bias == nullptr) {
    key.push_back(kNoBias);
  } else {
    append_tensor(key, *call.bias, grad_mode);
  }
  for (py::handle argument : {stride, padding, dilation, groups, shuffle_groups}) {
    if (!append_argument(key, argument.ptr())) return std::nullopt;
  }
  key.push_back(at::get_num_threads());
  return call;
}

// Whether nothing in this thread's state sends calls elsewhere than their settled path: torch.jit tracing,
// torch.func transforms and dispatch modes must see groupconv's ops, and autocast changes the operands' dtypes.
bool state_allows_settled_paths() {
  if (torch::jit::tracer::isTracing()) return false;
  // (a torch.func transform includes its front key while its interpreter stack is not empty)
  if (c10::impl::tls_is_dispatch_key_included(c10::DispatchKey::FuncTorchDynamicLayerFrontMode)) return false;
  if (c10::impl::TorchDispatchModeTLS::stack_len() > 0) return false;
  // (autocast is on for a device while its key is not excluded; all are excluded by default)
  const c10::DispatchKeySet excluded = c10::impl::tls_local_dispatch_key_set().excluded_;
  return (excluded & c10::autocast_dispatch_keyset) == c10::autocast_dispatch_keyset;
}

struct TorchConv {
  int64_t spatial_dims = 0;
  std::array<int64_t, 3> stride{}, padding{}, dilation{};
  int64_t groups = 1;
  at::MemoryFormat memory_format = at::MemoryFormat::Contiguous;

  at::Tensor operator()(const at::Tensor& input, const at::Tensor& weight,
                        const c10::optional<at::Tensor>& bias) const {
    const at::IntArrayRef s(stride.data(), spatial_dims), p(padding.data(), spatial_dims),
        d(dilation.data(), spatial_dims);
    at::Tensor output = spatial_dims == 1   ? at::conv1d(input, weight, bias, s, p, d, groups)
                        : spatial_dims == 2 ? at::conv2d(input, weight, bias, s, p, d, groups)
                                            : at::conv3d(input, weight, bias, s, p, d, groups);
    return output.contiguous(memory_format);
  }
};

struct Path {
  std::optional<TorchConv> torch_conv;  // torch's conv, or else:
  py::object runner;                    // a Python callable (input, weight, bias) -> output
  std::list<Key>::iterator recency;     // the key's place in Table::recency
};

// The settled paths, most recently used first. Made once and never destroyed: the Python objects it holds must not
// be released after the interpreter has gone, at exit.
struct Table {
  std::unordered_map<Key, Path, KeyHash> paths;
  std::list<Key> recency;
  size_t capacity = 4096;  // (the bound of the library's caches in Python: ops/cache.py)

  Path* find(const Key& key) {
    auto found = paths.find(key);
    if (found == paths.end()) return nullptr;
    recency.splice(recency.begin(), recency, found->second.recency);
    return &found->second;
  }

  void put(Key key, Path path) {
    auto found = paths.find(key);
    if (found != paths.end()) {
      recency.erase(found->second.recency);
      paths.erase(found);
    }
    recency.push_front(key);
    path.recency = recency.begin();
    paths.emplace(std::move(key), std::move(path));
    trim();
  }

  void trim() {
    while (paths.size() > capacity) {
      paths.erase(recency.back());
      recency.pop_back();
    }
  }

  void clear() {
    paths.clear();
    recency.clear();
  }
};

Table& table() {
  static Table* table = new Table();
  return *table;
}

at::MemoryFormat parse_memory_format(const std::string& name) {
  if (name == "contiguous") return at::MemoryFormat::Contiguous;
  if (name == "channels_last") return at::MemoryFormat::ChannelsLast;
  if (name == "channels_last_3d") return at::MemoryFormat::ChannelsLast3d;
  TORCH_CHECK(false, "memory_format='", name, "' must be 'contiguous', 'channels_last' or 'channels_last_3d'");
}

std::array<int64_t, 3> fixed(const std::vector<int64_t>& values, int64_t spatial_dims, const char* name) {
  TORCH_CHECK(static_cast<int64_t>(values.size()) == spatial_dims, name, " has ", values.size(),
              " values; the conv has ", spatial_dims, " spatial dimensions");
  std::array<int64_t, 3> result{};
  std::copy(values.begin(), values.end(), result.begin());
  return result;
}

}  // namespace

py::object run_settled_conv(int64_t spatial_dims, py::handle input, py::handle weight, py::handle bias,
                            py::handle stride, py::handle padding, py::handle dilation, py::handle groups,
                            py::handle shuffle_groups) {
  if (table().paths.empty() || !state_allows_settled_paths()) return py::none();
  std::optional<Call> call =
      read_call(spatial_dims, input, weight, bias, stride, padding, dilation, groups, shuffle_groups);
  if (!call) return py::none();
  Path* path = table().find(call->key);
  if (path == nullptr) return py::none();
  if (!path->torch_conv) {
    py::object runner = path->runner;  // (held: the call may change the table)
    return runner(input, weight, bias);
  }
  const TorchConv conv = *path->torch_conv;  // (a copy: another thread may change the table without the GIL)
  at::Tensor output;
  {
    py::gil_scoped_release no_gil;  // (as torch's own Python bindings do around an op)
    output = conv(*call->input, *call->weight,
                  call->bias == nullptr ? c10::optional<at::Tensor>() : c10::optional<at::Tensor>(*call->bias));
  }
  return py::reinterpret_steal<py::object>(THPVariable_Wrap(std::move(output)));
}

bool settle_conv_on_torch(int64_t spatial_dims, py::handle input, py::handle weight, py::handle bias,
                          py::handle stride, py::handle padding, py::handle dilation, py::handle groups,
                          py::handle shuffle_groups, std::vector<int64_t> resolved_stride,
                          std::vector<int64_t> resolved_padding, std::vector<int64_t> resolved_dilation,
                          int64_t resolved_groups, const std::string& memory_format) {
  TORCH_CHECK(spatial_dims >= 1 && spatial_dims <= 3, "spatial_dims=", spatial_dims, " must be 1, 2 or 3");
  TorchConv conv;
  conv.spatial_dims = spatial_dims;
  conv.stride = fixed(resolved_stride, spatial_dims, "stride");
  conv.padding = fixed(resolved_padding, spatial_dims, "padding");
  conv.dilation = fixed(resolved_dilation, spatial_dims, "dilation");
  conv.groups = resolved_groups;
  conv.memory_format = parse_memory_format(memory_format);
  if (!state_allows_settled_paths()) return false;
  std::optional<Call> call =
      read_call(spatial_dims, input, weight, bias, stride, padding, dilation, groups, shuffle_groups);
  if (!call) return false;
  Path path;
  path.torch_conv = conv;
  table().put(std::move(call->key), std::move(path));
  return true;
}

bool settle_conv_on_runner(int64_t spatial_dims, py::handle input, py::handle weight, py::handle bias,
                           py::handle stride, py::handle padding, py::handle dilation, py::handle groups,
                           py::handle shuffle_groups, py::object runner) {
  TORCH_CHECK(PyCallable_Check(runner.ptr()), "runner must be callable");
  if (!state_allows_settled_paths()) return false;
  std::optional<Call> call =
      read_call(spatial_dims, input, weight, bias, stride, padding, dilation, groups, shuffle_groups);
  if (!call) return false;
  Path path;
  path.runner = std::move(runner);
  table().put(std::move(call->key), std::move(path));
  return true;
}

py::object settled_conv_path(int64_t spatial_dims, py::handle input, py::handle weight, py::handle bias,
                             py::handle stride, py::handle padding, py::handle dilation, py::handle groups,
                             py::handle shuffle_groups) {
  std::optional<Call> call =
      read_call(spatial_dims, input, weight, bias, stride, padding, dilation, groups, shuffle_groups);
  if (!call) return py::none();
  auto found = table().paths.find(call->key);
  if (found == table().paths.end()) return py::none();
  return found->second.torch_conv ? py::str("torch") : found->second.runner;
}

void forget_settled_convs() { table().clear(); }

int64_t settled_conv_count() { return static_cast<int64_t>(table().paths.size()); }

void set_settled_conv_capacity(int64_t capacity) {
  TORCH_CHECK(capacity > 0, "capacity=", capacity, " must be positive");
  table().capacity = static_cast<size_t>(capacity);
  table().trim();
}

int64_t settled_conv_capacity() { return static_cast<int64_t>(table().capacity); }
