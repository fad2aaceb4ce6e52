// Fill kernels of the log-binned histograms: each fill runs in blocks of kBlock values, first a
// vectorised pass that turns the block's values into counter offsets ("keys"), then a scalar pass
// that increments the counters at those keys while prefetching the next block's input.
#include "histograms.hpp"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <future>
#include <limits>
#include <memory>
#include <string>
#include <thread>
#include <tuple>
#include <type_traits>
#include <utility>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace pyfloor {
namespace {

// The key passes are compiled three times, for AVX-512 (x86-64-v4), AVX2 (x86-64-v3) and the baseline: one
// always-inline body, instantiated inside a function per target, and a switch on the level set at run time.
#if defined(__GNUC__) && defined(__x86_64__) && !defined(PYFLOOR_NO_DISPATCH)
#define PYFLOOR_DISPATCH 1
#define PYFLOOR_TARGET_V4 __attribute__((target("arch=x86-64-v4")))
#define PYFLOOR_TARGET_V3 __attribute__((target("arch=x86-64-v3")))
#else
#define PYFLOOR_DISPATCH 0
#endif

SimdLevel detect_simd_level() {
#if PYFLOOR_DISPATCH
    __builtin_cpu_init();
#if defined(__clang__) && __clang_major__ < 16
    // older clang knows no level names: their defining feature sets (x86-64 psABI)
    const bool v3 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("bmi") &&
                    __builtin_cpu_supports("bmi2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("avx");
    const bool v4 = v3 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                    __builtin_cpu_supports("avx512cd") && __builtin_cpu_supports("avx512dq") &&
                    __builtin_cpu_supports("avx512vl");
#else
    const bool v3 = __builtin_cpu_supports("x86-64-v3"), v4 = __builtin_cpu_supports("x86-64-v4");
#endif
    if (v4) return SimdLevel::x86_64_v4;
    if (v3) return SimdLevel::x86_64_v3;
#endif
    return SimdLevel::baseline;
}

std::atomic<SimdLevel>& current_simd_level() {
    static std::atomic<SimdLevel> level{supported_simd_level()};
    return level;
}

// body(args...) compiled for the level fills use now; `body` is a generic lambda whose call operator is inlined into
// the target-specific function that calls it.
#if PYFLOOR_DISPATCH
template <class Body, class... Args>
PYFLOOR_TARGET_V4 auto run_v4(Body body, Args... args) {
    return body(args...);
}
template <class Body, class... Args>
PYFLOOR_TARGET_V3 auto run_v3(Body body, Args... args) {
    return body(args...);
}
#endif
template <class Body, class... Args>
auto at_simd_level(Body body, Args... args) {
#if PYFLOOR_DISPATCH
    switch (current_simd_level().load(std::memory_order_relaxed)) {
        case SimdLevel::x86_64_v4:
            return run_v4(body, args...);
        case SimdLevel::x86_64_v3:
            return run_v3(body, args...);
        case SimdLevel::baseline:
            break;
    }
#endif
    return body(args...);
}

constexpr size_t kBlock = 2048;                   // values per block: its keys stay in L1
constexpr size_t kLanes = 4;                      // sub-histograms of a dense fill, used in turn
constexpr size_t kMinPerThread = size_t(1) << 16;  // values below which another thread doesn't pay
constexpr size_t kFoldEvery = size_t(1) << 30;     // values per thread between folds of uint32 lanes
constexpr size_t kTileBytes = size_t(1) << 20;     // counts of one feature tile: about half an L2
constexpr size_t kLine = 64;                       // bytes of a cache line
constexpr size_t kGroup = 16;                      // increments per prefetched line of each input

template <class T>
using Storage = typename T::Storage;

// Bin of the float32 whose bits are `bits`; with Finite, ±inf and NaN come out as overflow, for about a third fewer
// instructions.
template <bool Finite>
uint32_t bin_of_bits(const BinParams& p, uint32_t bits) {
    if constexpr (Finite)
        return finite_bin_of(p, bits);
    else
        return bin_of(p, bits);
}

// keys[i] = base[i] + bin of x[i] (see bin_of_bits); returns whether it met ±inf or NaN.
template <class T, bool Finite>
bool value_keys(const BinParams p, const Storage<T>* __restrict x, const uint32_t* __restrict base, size_t n,
                uint32_t* __restrict keys) {
    return at_simd_level(
        [](const BinParams p, const Storage<T>* __restrict x, const uint32_t* __restrict base, size_t n,
           uint32_t* __restrict keys) __attribute__((always_inline)) {
            uint32_t nonfinite = 0;
#pragma omp simd reduction(| : nonfinite)
            for (size_t i = 0; i < n; ++i) {
                const uint32_t bits = T::bits(x[i]);
                nonfinite |= uint32_t((bits & 0x7fffffffu) >= kInfBits);
                keys[i] = base[i] + bin_of_bits<Finite>(p, bits);
            }
            return nonfinite != 0;
        },
        p, x, base, n, keys);
}

// keys[i] = base[i] + bin of x[i]: the finite pass, redone in full for a block that holds ±inf or NaN.
template <class T>
void keys_of_values(const BinParams& p, const Storage<T>* x, const uint32_t* base, size_t n, uint32_t* keys) {
    if (value_keys<T, true>(p, x, base, n, keys)) value_keys<T, false>(p, x, base, n, keys);
}

// What pair_keys met.
enum : uint32_t { kAllFinite = 0, kNonFinite = 1, kBadIndex = 2 };

// keys[i] = idx[i] * n_bins + bin of x[i] (see bin_of_bits). Returns kBadIndex if an idx[i] lies outside
// [0, n_features), else kNonFinite if it met ±inf or NaN, else kAllFinite.
template <class T, class I, bool Finite>
uint32_t pair_keys(const BinParams p, const I* __restrict idx, const Storage<T>* __restrict x, size_t n,
                   uint32_t n_features, uint32_t n_bins, uint32_t* __restrict keys) {
    return at_simd_level(
        [](const BinParams p, const I* __restrict idx, const Storage<T>* __restrict x, size_t n, uint32_t n_features,
           uint32_t n_bins, uint32_t* __restrict keys) __attribute__((always_inline)) {
            using U = std::make_unsigned_t<I>;
            uint32_t bad = 0, nonfinite = 0;
#pragma omp simd reduction(| : bad, nonfinite)
            for (size_t i = 0; i < n; ++i) {
                const uint32_t bits = T::bits(x[i]);
                bad |= uint32_t(U(idx[i]) >= U(n_features));
                nonfinite |= uint32_t((bits & 0x7fffffffu) >= kInfBits);
                keys[i] = uint32_t(idx[i]) * n_bins + bin_of_bits<Finite>(p, bits);
            }
            return bad ? kBadIndex : nonfinite ? kNonFinite : kAllFinite;
        },
        p, idx, x, n, n_features, n_bins, keys);
}

// keys[i] = idx[i] * n_bins + bin of x[i]: the finite pass, redone in full for a block that holds ±inf or NaN.
// Returns whether every idx[i] lies in [0, n_features).
template <class T, class I>
bool keys_of_pairs(const BinParams& p, const I* idx, const Storage<T>* x, size_t n, uint32_t n_features,
                   uint32_t n_bins, uint32_t* keys) {
    const uint32_t met = pair_keys<T, I, true>(p, idx, x, n, n_features, n_bins, keys);
    if (met == kNonFinite) pair_keys<T, I, false>(p, idx, x, n, n_features, n_bins, keys);
    return met != kBadIndex;
}

// Walks through the bytes of n elements at `data`, prefetching one cache line per step(): what the next block's key
// pass will read. The increment loops read no input, so without it the hardware prefetcher would idle while they run
// and every key pass would start by waiting on memory.
class Prefetcher {
public:
    Prefetcher() = default;
    template <class E>
    Prefetcher(const E* data, size_t n)
        : next_(reinterpret_cast<const char*>(data)), end_(reinterpret_cast<const char*>(data + n)) {}
    void step() {
        if (next_ < end_) {
            __builtin_prefetch(next_);
            next_ += kLine;
        }
    }

private:
    const char* next_ = nullptr;
    const char* end_ = nullptr;
};

// op(keys[i]) for every i in order, stepping every prefetcher once per kGroup keys.
template <class Op, class... Ahead>
void for_each_key(const uint32_t* __restrict keys, size_t n, Op op, Ahead... ahead) {
    size_t i = 0;
    for (; i + kGroup <= n; i += kGroup) {
        (ahead.step(), ...);
#pragma GCC unroll 16
        for (size_t j = i; j < i + kGroup; ++j) op(keys[j]);
    }
    for (; i < n; ++i) op(keys[i]);
}

// counts[keys[i]] += delta for every i, prefetching `ahead`.
template <class C, class... Ahead>
void add_at(const uint32_t* keys, size_t n, C* __restrict counts, C delta, Ahead... ahead) {
    for_each_key(keys, n, [counts, delta](uint32_t k) { counts[k] += delta; }, ahead...);
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
            // The values of the tile's pass over rows [r, r + rows_per_pass), contiguous in x.
            auto pass = [&](size_t r) { return std::pair(x + r * m + f0, width * std::min(rows_per_pass, rows - r)); };
            for (size_t r = 0; r < rows; r += rows_per_pass) {
                const auto [values, len] = pass(r);
                keys_of_values<T>(p, values, base.data(), len, keys.data());
                const size_t next = r + rows_per_pass;
                add_at<int64_t>(keys.data(), len, tile_counts, 1,
                                next < rows ? std::make_from_tuple<Prefetcher>(pass(next)) : Prefetcher());
            }
        }
    });
}

// One histogram over n values: each worker counts its slice into kLanes uint32 sub-histograms
// (consecutive values go to different lanes, so a run of equal bins doesn't wait on its own
// stores), folds them into a private int64 histogram, and the caller adds those up.
template <class T>
void fill_values(const LogBins& bins, const Storage<T>* x, size_t n, int threads, int64_t* counts) {
    const BinParams p(bins);
    const size_t nb = size_t(bins.n_bins());
    const int workers = workers_for(threads, n, kMinPerThread);
    if (workers == 1 && n < kLanes * nb)  // too few values to pay for the lanes: count them as one feature
        return fill_rows<T>(bins, x, n, 1, 1, counts);
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
            const Prefetcher next_block(x + s + len, std::min(kBlock, end - s - len));
            add_at<uint32_t>(block_keys.data(), len, lanes.data(), 1, next_block);
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

// Position of the first index in idx[0, n) outside [0, m).
template <class I>
size_t first_bad(const I* idx, size_t n, size_t m) {
    using U = std::make_unsigned_t<I>;
    return size_t(std::find_if(idx, idx + n, [m](I i) { return U(i) >= U(m); }) - idx);
}

// The (index, value) pairs of a sparse fill, with what their keys idx * n_bins + bin need.
template <class T, class I>
struct Pairs {
    BinParams p;
    uint32_t n_bins;
    size_t m;  // features
    const I* idx;
    const Storage<T>* x;
    size_t n;

    // Computes the keys of pairs [begin, end) block by block and passes each block to
    // count(keys, len, prefetchers of the next block's indices and values), until `end`, a block holding an index
    // outside [0, m) (left uncounted), or `abort`. Sets `stop` to the first pair not counted; returns the bad
    // index's position, or n if none.
    template <class Count>
    size_t sweep(size_t begin, size_t end, const std::atomic<bool>& abort, size_t& stop, Count count) const {
        std::vector<uint32_t> keys(kBlock);
        for (stop = begin; stop < end && !abort.load(std::memory_order_relaxed); stop += kBlock) {
            const size_t len = std::min(kBlock, end - stop);
            if (!keys_of_pairs<T, I>(p, idx + stop, x + stop, len, uint32_t(m), n_bins, keys.data()))
                return stop + first_bad(idx + stop, len, m);
            const size_t next = std::min(kBlock, end - stop - len);
            count(keys.data(), len, Prefetcher(idx + stop + len, next), Prefetcher(x + stop + len, next));
        }
        stop = std::min(stop, end);
        return n;
    }
};

// Counts every pair straight into the int64 `counts`, on the calling thread. A bad index takes back what was
// counted and throws, leaving the counts unchanged.
template <class T, class I>
void count_in_place(const Pairs<T, I>& pairs, int64_t* counts) {
    const std::atomic<bool> never{false};
    auto add = [counts](int64_t delta) {
        return [counts, delta](const uint32_t* keys, size_t len, auto... ahead) {
            add_at<int64_t>(keys, len, counts, delta, ahead...);
        };
    };
    size_t stop, undone;
    const size_t bad = pairs.sweep(0, pairs.n, never, stop, add(1));
    if (bad < pairs.n) {
        pairs.sweep(0, stop, never, undone, add(-1));
        throw IndexOutOfRange(bad, int64_t(pairs.idx[bad]), pairs.m);
    }
}

// One worker's counts of its pairs in 8-bit counters that wrap to zero every 256 counts, with a log of the keys at
// which one wrapped. An eighth of the int64 table's bytes, so that many more of the bins in use stay in cache.
class NarrowCounts {
public:
    using Counter = uint8_t;
    static constexpr int64_t kWrap = int64_t(1) << (8 * sizeof(Counter));  // counts a wrap stands for

    // Zeroed counters for `size` bins and room for the wraps of n_pairs counts (one per kWrap at most).
    NarrowCounts(size_t size, size_t n_pairs)
        : counters_(size), wraps_(n_pairs / kWrap + 1) {}

    // Counts one at each of keys[0, n), prefetching `ahead`.
    template <class... Ahead>
    void add(const uint32_t* keys, size_t n, Ahead... ahead) {
        Counter* __restrict c = counters_.data();
        uint32_t* __restrict wrap = wraps_.data() + n_wraps_;
        for_each_key(keys, n, [c, &wrap](uint32_t k) {
            if (__builtin_expect(++c[k] == 0, 0)) *wrap++ = k;
        }, ahead...);
        n_wraps_ = size_t(wrap - wraps_.data());
    }

    // counts[b] += the count of bin b, for b in [begin, end).
    void fold_into(int64_t* counts, size_t begin, size_t end) const {
        for (const uint32_t* k = wraps_.data(); k < wraps_.data() + n_wraps_; ++k)
            if (*k >= begin && *k < end) counts[*k] += kWrap;
        const Counter* c = counters_.data();
        size_t b = begin;
        for (; b + kFoldGroup <= end; b += kFoldGroup) {
            uint64_t group;  // kFoldGroup counters, one cache line of int64 counts
            std::memcpy(&group, c + b, sizeof group);
            if (group == 0) continue;  // most bins of a feature are empty: leave their counts untouched
            for (size_t j = b; j < b + kFoldGroup; ++j) counts[j] += c[j];
        }
        for (; b < end; ++b) counts[b] += c[b];
    }

private:
    static constexpr size_t kFoldGroup = sizeof(uint64_t) / sizeof(Counter);
    std::vector<Counter, CounterAllocator<Counter>> counters_;
    std::vector<uint32_t> wraps_;
    size_t n_wraps_ = 0;
};

// Counts the pairs on `workers` threads, each into its own NarrowCounts, then adds those into `counts`, each thread
// a range of bins. Nothing touches `counts` before every pair has been counted, so a bad index or any failure leaves
// them unchanged.
template <class T, class I>
void count_narrow(const Pairs<T, I>& pairs, int workers, int64_t* counts) {
    const size_t size = pairs.m * pairs.n_bins, w = size_t(workers);
    std::vector<std::unique_ptr<NarrowCounts>> parts(w);
    std::vector<size_t> bad(w, pairs.n);
    std::atomic<bool> failed{false};
    run_parallel(workers, [&](int t) {
        try {
            const auto [begin, end] = slice(pairs.n, w, size_t(t));
            parts[size_t(t)] = std::make_unique<NarrowCounts>(size, end - begin);
            NarrowCounts& part = *parts[size_t(t)];
            auto count = [&part](const uint32_t* keys, size_t len, auto... ahead) { part.add(keys, len, ahead...); };
            size_t stop;
            bad[size_t(t)] = pairs.sweep(begin, end, failed, stop, count);
            if (bad[size_t(t)] < pairs.n) failed = true;
        } catch (...) {
            failed = true;
            throw;
        }
    });
    if (failed) {
        const size_t first = *std::min_element(bad.begin(), bad.end());
        throw IndexOutOfRange(first, int64_t(pairs.idx[first]), pairs.m);
    }
    run_parallel(workers, [&](int t) {
        const auto [begin, end] = slice(size, w, size_t(t));
        for (const auto& part : parts) part->fold_into(counts, begin, end);
    });
}

// Per-feature histograms of (index, value) pairs. A fill of fewer pairs than counters is counted in place on one
// thread (narrow counters would cost more to set up and add up than they save); a larger one in narrow counters
// (see NarrowCounts), on more threads where it is large enough.
template <class T, class I>
void fill_pairs(const LogBins& bins, size_t m, const I* idx, const Storage<T>* x, size_t n, int threads,
                int64_t* counts) {
    const Pairs<T, I> pairs{BinParams(bins), uint32_t(bins.n_bins()), m, idx, x, n};
    const size_t size = m * size_t(bins.n_bins());
    const int workers = workers_for(threads, n, std::max(kMinPerThread, size / 8));
    if (workers == 1 && n < size)
        count_in_place(pairs, counts);
    else
        count_narrow(pairs, workers, counts);
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

// f(tag) with a value of the element type `type` names (Float32, Float16 or BFloat16).
template <class F>
void with_value_type(ValueType type, F f) {
    switch (type) {
        case ValueType::float32: return f(Float32{});
        case ValueType::float16: return f(Float16{});
        case ValueType::bfloat16: return f(BFloat16{});
    }
}

}  // namespace

SimdLevel supported_simd_level() {
    static const SimdLevel best = detect_simd_level();
    return best;
}

SimdLevel simd_level() { return current_simd_level().load(); }

const char* simd_level_name(SimdLevel level) {
    switch (level) {
        case SimdLevel::x86_64_v4:
            return "x86-64-v4";
        case SimdLevel::x86_64_v3:
            return "x86-64-v3";
        case SimdLevel::baseline:
            break;
    }
    return "baseline";
}

SimdLevel parse_simd_level(const std::string& name) {
    for (SimdLevel level : {SimdLevel::baseline, SimdLevel::x86_64_v3, SimdLevel::x86_64_v4})
        if (name == simd_level_name(level)) return level;
    throw std::invalid_argument("unknown SIMD level '" + name + "'; expected baseline, x86-64-v3 or x86-64-v4");
}

void set_simd_level(SimdLevel level) {
    const SimdLevel best = supported_simd_level();
    if (static_cast<int>(level) > static_cast<int>(best)) {
        std::string supported = "baseline";
        if (best >= SimdLevel::x86_64_v3) supported += ", x86-64-v3";
        if (best >= SimdLevel::x86_64_v4) supported += ", x86-64-v4";
        throw std::invalid_argument(std::string("SIMD level ") + simd_level_name(level) +
                                    " is not supported by this CPU (or build); it supports " + supported);
    }
    current_simd_level().store(level);
}

void set_simd_level_from_environment() {
    const char* name = std::getenv("PYFLOOR_SIMD");
    if (name == nullptr || *name == '\0') return;
    try {
        set_simd_level(parse_simd_level(name));
    } catch (const std::invalid_argument& e) {
        throw std::invalid_argument(std::string("PYFLOOR_SIMD=") + name + ": " + e.what());
    }
}

void* allocate_counters(size_t bytes) {
    constexpr size_t kHugePage = size_t(1) << 21;
    if (bytes < kHugePage) {
        if (void* p = std::malloc(std::max<size_t>(bytes, 1))) return p;
        throw std::bad_alloc();
    }
    const size_t rounded = (bytes + kHugePage - 1) / kHugePage * kHugePage;
    void* p = std::aligned_alloc(kHugePage, rounded);
    if (!p) throw std::bad_alloc();
#if defined(__linux__)
    madvise(p, rounded, MADV_HUGEPAGE);  // advice: ignored where huge pages are off
#endif
    return p;
}

IndexOutOfRange::IndexOutOfRange(size_t position, int64_t value, size_t n_features)
    : std::out_of_range("index " + std::to_string(value) + " at position " + std::to_string(position) +
                        " is outside [0, " + std::to_string(n_features) + ")"),
      position(position),
      value(value) {}

Histogram::Histogram(const LogBins& bins) : bins_(bins), counts_(size_t(bins.n_bins()), 0) {}

void Histogram::fill(const void* values, ValueType type, size_t n, int threads) {
    check_threads(threads);
    std::lock_guard<std::mutex> lock(mutex_);
    with_value_type(type, [&](auto tag) {
        using T = decltype(tag);
        fill_values<T>(bins_, static_cast<const Storage<T>*>(values), n, threads, counts());
    });
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
    with_value_type(type, [&](auto tag) {
        using T = decltype(tag);
        const auto* x = static_cast<const Storage<T>*>(values);
        if (index_type == IndexType::int32)
            fill_pairs<T>(bins_, n_features_, static_cast<const int32_t*>(indices), x, n_pairs, threads, counts());
        else
            fill_pairs<T>(bins_, n_features_, static_cast<const int64_t*>(indices), x, n_pairs, threads, counts());
    });
}

void FeatureHistograms::fill_dense(const void* values, ValueType type, size_t n_rows, int threads) {
    check_threads(threads);
    std::lock_guard<std::mutex> lock(mutex_);
    with_value_type(type, [&](auto tag) {
        using T = decltype(tag);
        fill_rows<T>(bins_, static_cast<const Storage<T>*>(values), n_rows, n_features_, threads, counts());
    });
}

void FeatureHistograms::add(FeatureHistograms& other) {
    if (!(bins_ == other.bins_) || n_features_ != other.n_features_)
        throw std::invalid_argument("cannot add feature histograms of different shapes or binnings");
    add_locked(*this, other, mutex_, other.mutex_);
}

}  // namespace pyfloor
