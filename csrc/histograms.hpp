// Streaming, mergeable log-binned histograms (C++17, no Python).
//
// Histogram          one histogram over every value of a dense array.
// FeatureHistograms  one histogram per feature, filled from sparse codes (indices [N, k] with
//                    values [N, k]) or from dense [N, m] arrays.
//
// Counts are int64 and exact: filling a ∪ b gives the same counts as filling a and b separately and
// adding. Inputs are read in place as float32, float16 or bfloat16 (the last two as uint16 bits).
// A fill runs on up to `threads` std::threads with private counts merged at the end (dense
// per-feature fills instead give each thread its own features), and takes the object's mutex, so
// concurrent fills of one object serialise. A fill that throws leaves the counts unchanged.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "logbins.hpp"

namespace pyfloor {

// A sparse fill's index outside [0, n_features): its position in the flat pair arrays, and its value.
struct IndexOutOfRange : std::out_of_range {
    IndexOutOfRange(size_t position, int64_t value, size_t n_features);
    size_t position;
    int64_t value;
};

// `bytes` of memory for counters, released with std::free; throws std::bad_alloc. Beyond a huge page it is aligned
// to huge pages and advised to use them: counters incremented at random over tens of MB of 4 KiB pages would miss
// the TLB on most increments.
void* allocate_counters(size_t bytes);

// std::allocator for counter arrays, through allocate_counters.
template <class T>
struct CounterAllocator {
    using value_type = T;
    CounterAllocator() = default;
    template <class U>
    CounterAllocator(const CounterAllocator<U>&) {}
    T* allocate(size_t n) { return static_cast<T*>(allocate_counters(n * sizeof(T))); }
    void deallocate(T* p, size_t) { std::free(p); }
    template <class U>
    bool operator==(const CounterAllocator<U>&) const { return true; }
    template <class U>
    bool operator!=(const CounterAllocator<U>&) const { return false; }
};

// Instruction set the fills' vectorised key passes run with; every level gives the same counts.
// The default is the best this CPU supports; the environment variable PYFLOOR_SIMD (baseline,
// x86-64-v3 or x86-64-v4), applied by set_simd_level_from_environment(), or set_simd_level() picks
// a lower one, so every path can be tested and measured on one machine.
enum class SimdLevel { baseline = 0, x86_64_v3 = 1, x86_64_v4 = 2 };
SimdLevel supported_simd_level();  // the best level this CPU (and this build) runs
SimdLevel simd_level();            // the level fills use now
// Throws std::invalid_argument naming the levels this CPU supports if `level` is above them.
void set_simd_level(SimdLevel level);
// Applies PYFLOOR_SIMD if it is set; throws std::invalid_argument for a name or level this CPU lacks.
void set_simd_level_from_environment();
const char* simd_level_name(SimdLevel level);
// Throws std::invalid_argument for anything but "baseline", "x86-64-v3" or "x86-64-v4".
SimdLevel parse_simd_level(const std::string& name);

enum class ValueType { float32, float16, bfloat16 };
enum class IndexType { int32, int64 };

class Histogram {
public:
    explicit Histogram(const LogBins& bins);

    const LogBins& bins() const { return bins_; }
    int64_t* counts() { return counts_.data(); }
    size_t size() const { return counts_.size(); }

    // Counts the n values at `values` (contiguous, of type `type`).
    void fill(const void* values, ValueType type, size_t n, int threads);
    // Adds the counts of `other`; throws std::invalid_argument if the binnings differ.
    void add(Histogram& other);

private:
    LogBins bins_;
    std::vector<int64_t> counts_;
    std::mutex mutex_;
};

class FeatureHistograms {
public:
    // Throws std::invalid_argument if n_features * n_bins does not fit 32-bit bin keys.
    FeatureHistograms(const LogBins& bins, size_t n_features);

    const LogBins& bins() const { return bins_; }
    size_t n_features() const { return n_features_; }
    int64_t* counts() { return counts_.data(); }  // [n_features][n_bins], row-major
    size_t size() const { return counts_.size(); }

    // Counts values[i] in the histogram of feature indices[i], for the n_pairs contiguous pairs.
    // An index outside [0, n_features) throws std::out_of_range naming the first one found, and
    // leaves the counts as they were.
    void fill_sparse(const void* indices, IndexType index_type, const void* values, ValueType type,
                     size_t n_pairs, int threads);
    // Counts the row-major [n_rows, n_features] array `values`, column j into feature j.
    void fill_dense(const void* values, ValueType type, size_t n_rows, int threads);
    // Adds the counts of `other`; throws std::invalid_argument if the shapes or binnings differ.
    void add(FeatureHistograms& other);

private:
    LogBins bins_;
    size_t n_features_;
    std::vector<int64_t, CounterAllocator<int64_t>> counts_;
    std::mutex mutex_;
};

}  // namespace pyfloor
