// Peak memory of a stretch of CPU work: see memory_tracking.cpp.
#pragma once

#include <cstdint>

// Counts torch's CPU allocations from now on (their bytes held, and the most held at once) until
// stop_memory_tracking(); tracking again restarts the counts.
void start_memory_tracking();

// The most bytes held at once since start_memory_tracking(), by allocations made since then; stops counting.
int64_t stop_memory_tracking();
