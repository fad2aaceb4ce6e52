// Fill kernels of the log-binned histograms: each fill runs in blocks of kBlock values, first a
// vectorised pass that turns the block's values into counter offsets ("keys"), then a scalar pass
// that increments the counters at those keys.
#include "histograms.hpp"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <exception>
#include <future>
#include <limits>
#include <memory>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>

namespace pyfloor {
namespace {

// The key passes are compiled for AVX-512, AVX2 and the baseline, picked at load time by the CPU.
#if defined(__GNUC__) && defined(__x86_64__) && !defined(PYFLOOR_NO_DISPATCH)
#define PYFLOOR_SIMD_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define PYFLOOR_SIMD_CLONES
#endif

constexpr size_t kBlock = 2048;                   // values per block: its keys stay in L1
constexpr size_t kLanes = 4;                      // sub-histograms of a dense fill, used in turn
constexpr size_t kMinPerThread = size_t(1) << 16;  // values below which another thread doesn't pay
constexpr size_t kFoldEvery = size_t(1) << 30;     // values per thread between folds of uint32 lanes
constexpr size_t kTileBytes = size_t(1) << 20;     // counts of one feature tile: about half an L2

template <class T>
using Storage = typename T::Storage;

// keys[i] = base[i] + bin of x[i], counting ±inf and NaN as overflow; returns false if it met any.
template <class T>
PYFLOOR_SIMD_CLONES bool finite_keys_of_values(const BinParams p, const Storage<T>* __restrict x,
                                               const uint32_t* __restrict base, size_t n,
                                               uint32_t* __restrict keys) {
    uint32_t nonfinite = 0;
#pragma omp simd reduction(| : nonfinite)
    for (size_t i = 0; i < n; ++i) {
        const uint32_t bits = T::bits(x[i]);
        nonfinite |= uint32_t((bits & 0x7fffffffu) >= kInfBits);
        keys[i] = base[i] + finite_bin_of(p, bits);
    }
    return nonfinite == 0;
}

// keys[i] = base[i] + bin of x[i], for any values.
template <class T>
PYFLOOR_SIMD_CLONES void keys_of_any_values(const BinParams p, const Storage<T>* __restrict x,
                                            const uint32_t* __restrict base, size_t n,
                                            uint32_t* __restrict keys) {
#pragma omp simd
    for (size_t i = 0; i < n; ++i) keys[i] = base[i] + bin_of(p, T::bits(x[i]));
}

// keys[i] = base[i] + bin of x[i]: the finite pass (about a third fewer instructions), redone in
// full for a block that holds ±inf or NaN.
template <class T>
void keys_of_values(const BinParams& p, const Storage<T>* x, const uint32_t* base, size_t n, uint32_t* keys) {
    if (!finite_keys_of_values<T>(p, x, base, n, keys)) keys_of_any_values<T>(p, x, base, n, keys);
}

// keys[i] = idx[i] * n_bins + bin of x[i]; returns whether every idx[i] lies in [0, n_features).
template <class T, class I>
PYFLOOR_SIMD_CLONES bool keys_of_pairs(const BinParams p, const I* __restrict idx,
                                       const Storage<T>* __restrict x, size_t n, uint32_t n_features,
                                       uint32_t n_bins, uint32_t* __restrict keys) {
    using U = std::make_unsigned_t<I>;
    uint32_t bad = 0;
#pragma omp simd reduction(| : bad)
    for (size_t i = 0; i < n; ++i) {
        bad |= uint32_t(U(idx[i]) >= U(n_features));
        keys[i] = uint32_t(idx[i]) * n_bins + bin_of(p, T::bits(x[i]));
    }
    return bad == 0;
}

// counts[keys[i]] += delta for every i.
template <class C>
void add_at(const uint32_t* __restrict keys, size_t n, C* __restrict counts, C delta) {
#pragma GCC unroll 8
    for (size_t i = 0; i < n; ++i) counts[keys[i]] += delta;
}

// [begin, end) of part t of n items split into `parts` near-equal contiguous parts.
std::pair<size_t, size_t> slice(size_t n, size_t parts, size_t t) {
    const size_t q = n / parts, r = n % parts;
    const size_t begin = q * t + std::min(t, r);
    return {begin, begin + q + (t < r ? 1 : 0)};
}

// Threads worth starting for n items when each should get at least `per_thread`.
int workers_for(int threads, size_t n, size_t per_thread) {
    return int(std::max<size_t>(1, std::min<size_t>(size_t(threads), n / std::max<size_t>(per_thread, 1))));
}

// Runs work(t) for t in [0, n_threads), t = 0 on the calling thread; rethrows the first exception.
// No work starts unless every thread could be started.
template <class F>
void run_parallel(int n_threads, F&& work) {
    std::vector<std::exception_ptr> errors(static_cast<size_t>(n_threads));
    auto guarded = [&](int t) {
        try {
            work(t);
        } catch (...) {
            errors[size_t(t)] = std::current_exception();
        }
    };
    std::promise<bool> go;
    std::shared_future<bool> started = go.get_future().share();
    std::vector<std::thread> pool;
    try {
        for (int t = 1; t < n_threads; ++t)
            pool.emplace_back([&guarded, started, t] {
                if (started.get()) guarded(t);
            });
    } catch (...) {
        go.set_value(false);
        for (auto& th : pool) th.join();
        throw;
    }
    go.set_value(true);
    guarded(0);
    for (auto& th : pool) th.join();
    for (auto& e : errors)
        if (e) std::rethrow_exception(e);
}

void check_threads(int threads) {
    if (threads < 1) throw std::invalid_argument("threads must be >= 1; got " + std::to_string(threads));
}

// One histogram over n values: each worker counts its slice into kLanes uint32 sub-histograms
// (consecutive values go to different lanes, so a run of equal bins doesn't wait on its own
// stores), folds them into a private int64 histogram, and the caller adds those up.
template <class T>
void fill_values(const LogBins& bins, const Storage<T>* x, size_t n, int threads, int64_t* counts) {
    const BinParams p(bins);
    const size_t nb = size_t(bins.n_bins());
    std::vector<uint32_t> keys(kBlock);
    const int workers = workers_for(threads, n, kMinPerThread);
    if (workers == 1 && n < kLanes * nb) {  // too few values to pay for the lanes
        const std::vector<uint32_t> no_base(kBlock, 0);
        for (size_t s = 0; s < n; s += kBlock) {
            const size_t len = std::min(kBlock, n - s);
            keys_of_values<T>(p, x + s, no_base.data(), len, keys.data());
            add_at<int64_t>(keys.data(), len, counts, 1);
        }
        return;
    }
    std::vector<uint32_t> lane_base(kBlock);
    for (size_t i = 0; i < kBlock; ++i) lane_base[i] = uint32_t((i % kLanes) * nb);
    std::vector<std::vector<int64_t>> partial(static_cast<size_t>(workers));
    run_parallel(workers, [&](int t) {
        const auto [begin, end] = slice(n, size_t(workers), size_t(t));
        std::vector<uint32_t> lanes(kLanes * nb, 0), block_keys(kBlock);
        std::vector<int64_t>& sum = partial[size_t(t)];
        sum.assign(nb, 0);
        auto fold = [&] {
            static_assert(kLanes == 4, "fold adds four lanes");
            const uint32_t *l0 = lanes.data(), *l1 = l0 + nb, *l2 = l1 + nb, *l3 = l2 + nb;
            for (size_t b = 0; b < nb; ++b) sum[b] += int64_t(l0[b]) + l1[b] + l2[b] + l3[b];
            std::fill(lanes.begin(), lanes.end(), 0u);
        };
        for (size_t s = begin, since_fold = 0; s < end; s += kBlock) {
            const size_t len = std::min(kBlock, end - s);
            keys_of_values<T>(p, x + s, lane_base.data(), len, block_keys.data());
            add_at<uint32_t>(block_keys.data(), len, lanes.data(), 1);
            if ((since_fold += len) >= kFoldEvery) {
                fold();
                since_fold = 0;
            }
        }
        fold();
    });
    for (const auto& sum : partial)
        for (size_t b = 0; b < nb; ++b) counts[b] += sum[b];
}

// Per-feature histograms of a row-major [rows, m] array. Features are cut into tiles whose counts
// fit in L2; each worker owns whole tiles (no two write the same counts) and sweeps every row of
// its tiles. Where one tile spans all features, a key pass covers several rows at once.
template <class T>
void fill_rows(const LogBins& bins, const Storage<T>* x, size_t rows, size_t m, int threads,
               int64_t* counts) {
    const BinParams p(bins);
    const size_t nb = size_t(bins.n_bins());
    const size_t cache_tile = std::clamp<size_t>(kTileBytes / (nb * sizeof(int64_t)), 64, kBlock);
    const int wanted = workers_for(threads, rows * m, kMinPerThread);
    const size_t tile = std::min(cache_tile, (m + size_t(wanted) - 1) / size_t(wanted));
    const size_t n_tiles = (m + tile - 1) / tile;
    const int workers = int(std::min<size_t>(size_t(wanted), n_tiles));
    const size_t rows_per_pass = tile == m ? std::max<size_t>(1, kBlock / m) : 1;
    std::vector<uint32_t> base(rows_per_pass * tile);
    for (size_t i = 0; i < base.size(); ++i) base[i] = uint32_t((i % tile) * nb);
    // Allocated up front: once counting starts, nothing may fail half-way.
    std::vector<std::vector<uint32_t>> worker_keys(size_t(workers), std::vector<uint32_t>(base.size()));
    run_parallel(workers, [&](int t) {
        std::vector<uint32_t>& keys = worker_keys[size_t(t)];
        for (size_t k = size_t(t); k < n_tiles; k += size_t(workers)) {
            const size_t f0 = k * tile, width = std::min(tile, m - f0);
            int64_t* tile_counts = counts + f0 * nb;
            for (size_t r = 0; r < rows; r += rows_per_pass) {
                const size_t len = width * std::min(rows_per_pass, rows - r);
                keys_of_values<T>(p, x + r * m + f0, base.data(), len, keys.data());
                add_at<int64_t>(keys.data(), len, tile_counts, 1);
            }
        }
    });
}

// Position of the first index in idx[0, n) outside [0, m).
template <class I>
size_t first_bad(const I* idx, size_t n, size_t m) {
    using U = std::make_unsigned_t<I>;
    return size_t(std::find_if(idx, idx + n, [m](I i) { return U(i) >= U(m); }) - idx);
}

struct FreeDeleter {
    void operator()(int64_t* p) const { std::free(p); }
};

// Per-feature histograms of (index, value) pairs. Worker 0 counts straight into `counts`, the others
// into zero-filled private copies (so extra threads are used only when the fill is large next to the
// counts) that are added at the end. A bad index (or any failure) stops every worker; worker 0 then
// takes back what it counted, so the counts are left unchanged.
template <class T, class I>
void fill_pairs(const LogBins& bins, size_t m, const I* idx, const Storage<T>* x, size_t n, int threads,
                int64_t* counts) {
    const BinParams p(bins);
    const uint32_t nb = uint32_t(bins.n_bins());
    const size_t size = m * nb;
    const int workers = workers_for(threads, n, std::max(kMinPerThread, size / 8));
    std::vector<std::unique_ptr<int64_t[], FreeDeleter>> copies(static_cast<size_t>(workers));
    std::vector<size_t> done(static_cast<size_t>(workers)), bad(static_cast<size_t>(workers), n);
    std::atomic<bool> failed{false};
    const std::atomic<bool> never{false};
    // Counts pairs [begin, ...) with weight delta until `end`, a block with a bad index, or `abort`;
    // sets `stop` to the first pair not counted and returns the bad index's position (n if none).
    auto sweep = [&](size_t begin, size_t end, int64_t* c, int64_t delta, const std::atomic<bool>& abort,
                     size_t& stop) {
        std::vector<uint32_t> keys(kBlock);
        for (stop = begin; stop < end && !abort.load(std::memory_order_relaxed); stop += kBlock) {
            const size_t len = std::min(kBlock, end - stop);
            if (!keys_of_pairs<T, I>(p, idx + stop, x + stop, len, uint32_t(m), nb, keys.data()))
                return stop + first_bad(idx + stop, len, m);
            add_at<int64_t>(keys.data(), len, c, delta);
        }
        stop = std::min(stop, end);
        return n;
    };
    auto count = [&](int t) {
        const auto [begin, end] = slice(n, size_t(workers), size_t(t));
        int64_t* c = counts;
        if (t > 0) {
            copies[size_t(t)].reset(static_cast<int64_t*>(std::calloc(size, sizeof(int64_t))));
            if (!copies[size_t(t)]) throw std::bad_alloc();
            c = copies[size_t(t)].get();
        }
        bad[size_t(t)] = sweep(begin, end, c, 1, failed, done[size_t(t)]);
        if (bad[size_t(t)] < n) failed = true;
    };
    auto take_back = [&] {
        size_t undone;
        sweep(0, done[0], counts, -1, never, undone);
    };
    try {
        run_parallel(workers, [&](int t) {
            try {
                count(t);
            } catch (...) {
                failed = true;
                throw;
            }
        });
    } catch (...) {
        take_back();
        throw;
    }
    if (failed) {
        take_back();
        const size_t first = *std::min_element(bad.begin(), bad.end());
        throw IndexOutOfRange(first, int64_t(idx[first]), m);
    }
    if (workers > 1) {
        run_parallel(workers, [&](int t) {
            const auto [begin, end] = slice(size, size_t(workers), size_t(t));
            for (int w = 1; w < workers; ++w) {
                const int64_t* c = copies[size_t(w)].get();
                for (size_t i = begin; i < end; ++i) counts[i] += c[i];
            }
        });
    }
}

// Adds `src` into `dst` (equal sizes), taking both mutexes; `self` adds a histogram to itself.
template <class H>
void add_locked(H& dst, H& src, std::mutex& dst_mutex, std::mutex& src_mutex) {
    if (&dst == &src) {
        std::lock_guard<std::mutex> lock(dst_mutex);
        for (size_t i = 0; i < dst.size(); ++i) dst.counts()[i] *= 2;
        return;
    }
    std::scoped_lock lock(dst_mutex, src_mutex);
    for (size_t i = 0; i < dst.size(); ++i) dst.counts()[i] += src.counts()[i];
}

}  // namespace

IndexOutOfRange::IndexOutOfRange(size_t position, int64_t value, size_t n_features)
    : std::out_of_range("index " + std::to_string(value) + " at position " + std::to_string(position) +
                        " is outside [0, " + std::to_string(n_features) + ")"),
      position(position),
      value(value) {}

Histogram::Histogram(const LogBins& bins) : bins_(bins), counts_(size_t(bins.n_bins()), 0) {}

void Histogram::fill(const void* values, ValueType type, size_t n, int threads) {
    check_threads(threads);
    std::lock_guard<std::mutex> lock(mutex_);
    switch (type) {
        case ValueType::float32:
            return fill_values<Float32>(bins_, static_cast<const float*>(values), n, threads, counts());
        case ValueType::float16:
            return fill_values<Float16>(bins_, static_cast<const uint16_t*>(values), n, threads, counts());
        case ValueType::bfloat16:
            return fill_values<BFloat16>(bins_, static_cast<const uint16_t*>(values), n, threads, counts());
    }
}

void Histogram::add(Histogram& other) {
    if (!(bins_ == other.bins_)) throw std::invalid_argument("cannot add histograms with different binnings");
    add_locked(*this, other, mutex_, other.mutex_);
}

FeatureHistograms::FeatureHistograms(const LogBins& bins, size_t n_features) : bins_(bins), n_features_(n_features) {
    if (n_features == 0) throw std::invalid_argument("n_features must be >= 1");
    if (n_features > std::numeric_limits<uint32_t>::max() / size_t(bins.n_bins()))
        throw std::invalid_argument("n_features * n_bins = " + std::to_string(n_features) + " * " +
                                    std::to_string(bins.n_bins()) + " exceeds 2^32 counters");
    counts_.assign(n_features * size_t(bins.n_bins()), 0);
}

void FeatureHistograms::fill_sparse(const void* indices, IndexType index_type, const void* values, ValueType type,
                                    size_t n_pairs, int threads) {
    check_threads(threads);
    std::lock_guard<std::mutex> lock(mutex_);
    auto with_index = [&](auto value_tag) {
        using T = decltype(value_tag);
        const auto* x = static_cast<const Storage<T>*>(values);
        if (index_type == IndexType::int32)
            fill_pairs<T>(bins_, n_features_, static_cast<const int32_t*>(indices), x, n_pairs, threads, counts());
        else
            fill_pairs<T>(bins_, n_features_, static_cast<const int64_t*>(indices), x, n_pairs, threads, counts());
    };
    switch (type) {
        case ValueType::float32: return with_index(Float32{});
        case ValueType::float16: return with_index(Float16{});
        case ValueType::bfloat16: return with_index(BFloat16{});
    }
}

void FeatureHistograms::fill_dense(const void* values, ValueType type, size_t n_rows, int threads) {
    check_threads(threads);
    std::lock_guard<std::mutex> lock(mutex_);
    switch (type) {
        case ValueType::float32:
            return fill_rows<Float32>(bins_, static_cast<const float*>(values), n_rows, n_features_, threads, counts());
        case ValueType::float16:
            return fill_rows<Float16>(bins_, static_cast<const uint16_t*>(values), n_rows, n_features_, threads,
                                      counts());
        case ValueType::bfloat16:
            return fill_rows<BFloat16>(bins_, static_cast<const uint16_t*>(values), n_rows, n_features_, threads,
                                       counts());
    }
}

void FeatureHistograms::add(FeatureHistograms& other) {
    if (!(bins_ == other.bins_) || n_features_ != other.n_features_)
        throw std::invalid_argument("cannot add feature histograms of different shapes or binnings");
    add_locked(*this, other, mutex_, other.mutex_);
}

}  // namespace pyfloor
