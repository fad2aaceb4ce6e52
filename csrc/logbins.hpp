// Log-binned layout of a histogram and the bin of a float, computed from its bits.
//
// A LogBins keeps `mantissa_bits` = p bits of mantissa: the positive log bins are
// [2^e (1 + j/2^p), 2^e (1 + (j+1)/2^p)) for e in [lo, hi), j in [0, 2^p), so a bin is at most
// 2^-p of its lower edge wide. Negative values get the mirror-image bins by magnitude. The bin of a
// float32 is (its magnitude bits) >> (23 - p), offset: no logarithm, no float arithmetic.
//
// Layout of the n_bins() counters, in value order:
//
//   0                  -inf
//   1                  negative overflow      (-inf, -2^hi]
//   2 .. n_log+1       negative log bins      (largest magnitude first)
//   n_log+2            negative underflow     (-2^lo, -0), denormals included
//   n_log+3            zero                   (+0 and -0)
//   n_log+4            positive underflow     (+0, 2^lo), denormals included
//   n_log+5 .. 2n_log+4 positive log bins     (smallest first)
//   2n_log+5           positive overflow      [2^hi, +inf)
//   2n_log+6           +inf
//   2n_log+7           NaN                    (any sign, any payload)
//
// with n_log = (hi - lo) * 2^p log bins per sign; n_bins() = 2 n_log + 8.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>

namespace pyfloor {

inline constexpr uint32_t kInfBits = 0x7f800000u;  // magnitude bits of +inf
inline constexpr int kMinExponent = -126;           // smallest normal float32 exponent
inline constexpr int kMaxExponent = 128;            // 2^128 is where float32 overflows to inf
inline constexpr int kMaxMantissaBits = 10;         // float16 holds 10 mantissa bits

struct LogBins {
    int mantissa_bits;  // p: relative bin width 2^-p
    int lo;             // log bins start at 2^lo
    int hi;             // and end at 2^hi

    // Throws std::invalid_argument unless 0 <= p <= 10 and -126 <= lo < hi <= 128.
    LogBins(int mantissa_bits, int lo, int hi) : mantissa_bits(mantissa_bits), lo(lo), hi(hi) {
        if (mantissa_bits < 0 || mantissa_bits > kMaxMantissaBits)
            throw std::invalid_argument("mantissa_bits must lie in [0, " + std::to_string(kMaxMantissaBits) +
                                        "]; got " + std::to_string(mantissa_bits));
        if (lo < kMinExponent || hi > kMaxExponent || lo >= hi)
            throw std::invalid_argument("need " + std::to_string(kMinExponent) + " <= lo < hi <= " +
                                        std::to_string(kMaxExponent) + "; got lo=" + std::to_string(lo) +
                                        ", hi=" + std::to_string(hi));
    }

    int32_t n_log() const { return (hi - lo) << mantissa_bits; }
    int32_t n_bins() const { return 2 * n_log() + 8; }
    int32_t zero_bin() const { return n_log() + 3; }
    bool operator==(const LogBins& o) const {
        return mantissa_bits == o.mantissa_bits && lo == o.lo && hi == o.hi;
    }
};

// The constants bin_of() needs, precomputed once per fill so that the inner loops only see plain
// integers (which the vectoriser keeps in registers).
struct BinParams {
    uint32_t shift;     // 23 - p
    int32_t first;      // (lo + 127) << p: the key of the first log bin
    int32_t last;       // (hi + 127) << p: one past the key of the last log bin
    int32_t zero;       // index of the zero bin
    int32_t nan;        // index of the NaN bin

    explicit BinParams(const LogBins& b)
        : shift(uint32_t(23 - b.mantissa_bits)),
          first((b.lo + 127) << b.mantissa_bits),
          last((b.hi + 127) << b.mantissa_bits),
          zero(b.zero_bin()),
          nan(b.n_bins() - 1) {}
};

// Bin index (see the layout above) of the finite float32 whose bits are `bits`; ±inf and NaN come
// out as overflow. Branch-free, so that loops calling it vectorise.
inline uint32_t finite_bin_of(const BinParams& p, uint32_t bits) {
    const int32_t mag = int32_t(bits & 0x7fffffffu);
    int32_t t = mag >> p.shift;
    t = t < p.first - 1 ? p.first - 1 : t;  // underflow (and denormals) → first - 1
    t = t > p.last ? p.last : t;            // overflow → last
    int32_t c = t - p.first + 2;            // distance from the zero bin: 1 underflow … n_log+2 overflow
    c = mag == 0 ? 0 : c;
    return uint32_t(int32_t(bits) < 0 ? p.zero - c : p.zero + c);
}

// Bin index of any float32, ±inf and NaN included.
inline uint32_t bin_of(const BinParams& p, uint32_t bits) {
    const int32_t mag = int32_t(bits & 0x7fffffffu);
    const int32_t inf = int32_t(bits) < 0 ? 0 : 2 * p.zero;  // -inf is bin 0, +inf the zero bin's mirror image
    const int32_t idx = mag == int32_t(kInfBits) ? inf : int32_t(finite_bin_of(p, bits));
    return uint32_t(mag > int32_t(kInfBits) ? p.nan : idx);
}

// Input element types. Each converts its element to the bits of the float32 of equal value, exactly.
struct Float32 {
    using Storage = float;
    static uint32_t bits(float x) {
        uint32_t b;
        std::memcpy(&b, &x, sizeof b);
        return b;
    }
};

struct BFloat16 {  // the top half of a float32
    using Storage = uint16_t;
    static uint32_t bits(uint16_t h) { return uint32_t(h) << 16; }
};

struct Float16 {  // IEEE binary16; denormals become normal float32s by an exact subtraction
    using Storage = uint16_t;
    static uint32_t bits(uint16_t h) {
        constexpr uint32_t exp_mask = 0x7c00u << 13;
        uint32_t o = uint32_t(h & 0x7fffu) << 13;
        const uint32_t exp = o & exp_mask;
        o += uint32_t(127 - 15) << 23;
        float denormal;
        const uint32_t denormal_bits = o + (1u << 23);  // 2^-14 (1 + m/1024)
        std::memcpy(&denormal, &denormal_bits, sizeof denormal);
        denormal -= 6.103515625e-05f;  // - 2^-14 leaves m·2^-24, exactly
        uint32_t renormal;
        std::memcpy(&renormal, &denormal, sizeof renormal);
        o = exp == exp_mask ? o + (uint32_t(128 - 16) << 23) : o;  // inf / NaN: exponent 255
        o = exp == 0 ? renormal : o;                               // zero / denormal
        return o | (uint32_t(h & 0x8000u) << 16);
    }
};

}  // namespace pyfloor
