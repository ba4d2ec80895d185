// Peak memory of a stretch of CPU work, for groupconv's rule that its forward+backward never holds
// more memory than torch's would (the tuner compares every contender with torch's kernels).
//
// torch keeps no statistics for its CPU allocator (CUDA has max_memory_allocated). While tracking,
// a counting allocator stands in for torch's CPU allocator: it allocates through the original one and
// counts the bytes held, and the most held at once, by the blocks it handed out. oneDNN's reorder and
// scratch buffers come from that allocator too (PyTorch registers it with ideep), so they count.
// Blocks handed out while tracking keep the counting deleter after tracking stops; it frees them
// through the original allocator's deleter, as it frees blocks allocated before tracking began.
#include "memory_tracking.h"

#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>

#include <atomic>
#include <mutex>
#include <unordered_map>

namespace {

// Above the default CPU allocator's priority, so that SetAllocator takes it; restoring the original
// at the same priority takes too.
constexpr uint8_t kTrackingPriority = 1;

void release(void* data);

class CountingAllocator final : public c10::Allocator {
 public:
  c10::Allocator* original = nullptr;
  c10::DeleterFnPtr original_deleter = nullptr;
  std::atomic<int64_t> held{0}, peak{0};
  std::mutex mutex;
  std::unordered_map<void*, size_t> sizes;  // the live blocks handed out while tracking

  c10::DataPtr allocate(size_t bytes) override {
    void* data = original->raw_allocate(bytes);
    if (data == nullptr) return {nullptr, nullptr, &release, c10::Device(c10::DeviceType::CPU)};
    {
      std::lock_guard<std::mutex> lock(mutex);
      sizes[data] = bytes;
    }
    const int64_t now = held.fetch_add(static_cast<int64_t>(bytes)) + static_cast<int64_t>(bytes);
    int64_t most = peak.load();
    while (now > most && !peak.compare_exchange_weak(most, now)) {
    }
    return {data, data, &release, c10::Device(c10::DeviceType::CPU)};
  }

  c10::DeleterFnPtr raw_deleter() const override { return &release; }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }
};

CountingAllocator counting;

void release(void* data) {
  if (data == nullptr) return;
  size_t bytes = 0;
  {
    std::lock_guard<std::mutex> lock(counting.mutex);
    auto block = counting.sizes.find(data);
    if (block != counting.sizes.end()) {
      bytes = block->second;
      counting.sizes.erase(block);
    }
  }
  counting.held.fetch_sub(static_cast<int64_t>(bytes));
  counting.original_deleter(data);  // (a block from before tracking: not counted, freed the same way)
}

}  // namespace

void start_memory_tracking() {
  c10::Allocator* current = c10::GetAllocator(c10::DeviceType::CPU);
  if (current != &counting) {
    TORCH_CHECK(current->raw_deleter() != nullptr, "memory tracking: torch's CPU allocator has no raw deleter");
    counting.original = current;
    counting.original_deleter = current->raw_deleter();
  }
  {
    // Blocks from an earlier tracking that are still live no longer count: their frees must not either.
    std::lock_guard<std::mutex> lock(counting.mutex);
    counting.sizes.clear();
  }
  counting.held = 0;
  counting.peak = 0;
  c10::SetAllocator(c10::DeviceType::CPU, &counting, kTrackingPriority);
}

int64_t stop_memory_tracking() {
  if (c10::GetAllocator(c10::DeviceType::CPU) == &counting) {
    c10::SetAllocator(c10::DeviceType::CPU, counting.original, kTrackingPriority);
  }
  return counting.peak.load();
}
