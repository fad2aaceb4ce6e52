// Python binding of the pyfloor C++ core: the only file that knows about Python.
//
// Inputs are numpy arrays read in place (no conversion, no copy): the binding checks dtype, byte
// order, alignment, C-contiguity and shape, raising TypeError or ValueError naming the argument,
// and releases the GIL while filling. Counts come back as numpy views of the C++ storage that keep
// their histogram alive.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>

#include "histograms.hpp"

namespace py = pybind11;
using namespace pybind11::literals;
using pyfloor::FeatureHistograms;
using pyfloor::Histogram;
using pyfloor::IndexType;
using pyfloor::LogBins;
using pyfloor::ValueType;

namespace {

std::string dtype_name(const py::array& a) { return py::str(a.dtype()).cast<std::string>(); }

std::string shape_of(const py::array& a) {
    std::string s = "(";
    for (py::ssize_t d = 0; d < a.ndim(); ++d) s += (d ? ", " : "") + std::to_string(a.shape(d));
    return s + (a.ndim() == 1 ? ",)" : ")");
}

// Raises unless `a` can be read in place: native byte order, aligned, C-contiguous.
void check_layout(const py::array& a, const char* name) {
    if (!a.dtype().attr("isnative").cast<bool>())
        throw py::type_error(std::string(name) + " must be in native byte order; got dtype " + dtype_name(a));
    if (!a.attr("flags").attr("aligned").cast<bool>())
        throw py::value_error(std::string(name) + " must be aligned to its dtype");
    if (!(a.flags() & py::array::c_style))
        throw py::value_error(std::string(name) + " must be C-contiguous (use numpy.ascontiguousarray or " +
                              "tensor.contiguous()); got strides that are not");
}

// The value type of `a`: float32, float16, or bfloat16 when `bfloat16` says its uint16 hold bf16 bits.
ValueType value_type(const py::array& a, bool bfloat16, const char* name) {
    check_layout(a, name);
    const py::dtype dt = a.dtype();
    const bool bits16 = dt.itemsize() == 2 && (dt.kind() == 'u' || dt.kind() == 'i');
    if (bfloat16) {
        if (bits16) return ValueType::bfloat16;
        throw py::type_error(std::string(name) + " with bfloat16=True must hold the bits as uint16 or int16; got " +
                             dtype_name(a));
    }
    if (dt.kind() == 'f' && dt.itemsize() == 4) return ValueType::float32;
    if (dt.kind() == 'f' && dt.itemsize() == 2) return ValueType::float16;
    throw py::type_error(std::string(name) + " must be float32, float16, or uint16 bfloat16 bits with " +
                         "bfloat16=True; got " + dtype_name(a));
}

IndexType index_type(const py::array& a) {
    check_layout(a, "indices");
    const py::dtype dt = a.dtype();
    if (dt.kind() == 'i' && dt.itemsize() == 4) return IndexType::int32;
    if (dt.kind() == 'i' && dt.itemsize() == 8) return IndexType::int64;
    throw py::type_error("indices must be int32 or int64; got " + dtype_name(a));
}

// A numpy view of the counters at `data` with the given shape, keeping `owner` alive.
py::array_t<int64_t> counts_view(int64_t* data, std::vector<py::ssize_t> shape, const py::object& owner) {
    return py::array_t<int64_t>(shape, data, owner);
}

template <class H>
void add_bins_properties(py::class_<H>& cls) {
    cls.def_property_readonly("mantissa_bits", [](const H& h) { return h.bins().mantissa_bits; })
        .def_property_readonly("lo", [](const H& h) { return h.bins().lo; })
        .def_property_readonly("hi", [](const H& h) { return h.bins().hi; })
        .def(
            "add",
            [](H& self, H& other) {
                py::gil_scoped_release nogil;
                self.add(other);
            },
            "other"_a, "Add the counts of `other` (same binning and shape) to these.");
}

}  // namespace

PYBIND11_MODULE(_hist, m) {
    m.doc() = "pyfloor C++ core: streaming, mergeable activation histograms.";
    try {
        pyfloor::set_simd_level_from_environment();
    } catch (const std::invalid_argument& e) {
        throw py::value_error(e.what());
    }
    m.def(
        "build_info",
        []() {
            py::dict info;
            info["cxx_standard"] = __cplusplus;
#if defined(__clang__)
            info["compiler"] = "clang " __clang_version__;
#elif defined(__GNUC__)
            info["compiler"] = "gcc " __VERSION__;
#else
            info["compiler"] = "unknown";
#endif
            info["simd"] = pyfloor::simd_level_name(pyfloor::simd_level());
            info["simd_supported"] = pyfloor::simd_level_name(pyfloor::supported_simd_level());
            return info;
        },
        "Compiler, language standard, the SIMD level the fill kernels run at and the best this CPU supports.");
    m.def(
        "set_simd_level",
        [](const std::string& name) {
            try {
                pyfloor::set_simd_level(pyfloor::parse_simd_level(name));
            } catch (const std::invalid_argument& e) {
                throw py::value_error(e.what());
            }
        },
        "level"_a,
        "Run the fill kernels' key passes at `level` ('baseline', 'x86-64-v3' or 'x86-64-v4'); every level gives the "
        "same counts. ValueError for a level this CPU lacks.");

    py::class_<Histogram> hist(m, "Histogram", "One log-binned histogram over all values filled (see pyfloor.histograms).");
    hist.def(py::init([](int mantissa_bits, int lo, int hi) {
                 return std::make_unique<Histogram>(LogBins(mantissa_bits, lo, hi));
             }),
             "mantissa_bits"_a, "lo"_a, "hi"_a)
        .def_property_readonly(
            "counts", [](py::object self) {
                auto& h = self.cast<Histogram&>();
                return counts_view(h.counts(), {py::ssize_t(h.size())}, self);
            },
            "int64 [n_bins] view of the counters.")
        .def(
            "fill",
            [](Histogram& h, const py::array& values, bool bfloat16, int threads) {
                const ValueType type = value_type(values, bfloat16, "values");
                const void* data = values.data();
                const size_t n = size_t(values.size());
                py::gil_scoped_release nogil;
                h.fill(data, type, n, threads);
            },
            "values"_a.noconvert(), py::kw_only(), "bfloat16"_a = false, "threads"_a = 1,
            "Count every value of a C-contiguous float32/float16 array (or uint16 bfloat16 bits).");
    add_bins_properties(hist);

    py::class_<FeatureHistograms> feat(m, "FeatureHistograms",
                                       "One log-binned histogram per feature (see pyfloor.histograms).");
    feat.def(py::init([](size_t n_features, int mantissa_bits, int lo, int hi) {
                 return std::make_unique<FeatureHistograms>(LogBins(mantissa_bits, lo, hi), n_features);
             }),
             "n_features"_a, "mantissa_bits"_a, "lo"_a, "hi"_a)
        .def_property_readonly("n_features", &FeatureHistograms::n_features)
        .def_property_readonly(
            "counts", [](py::object self) {
                auto& h = self.cast<FeatureHistograms&>();
                return counts_view(h.counts(), {py::ssize_t(h.n_features()), py::ssize_t(h.bins().n_bins())}, self);
            },
            "int64 [n_features, n_bins] view of the counters.")
        .def(
            "fill_sparse",
            [](FeatureHistograms& h, const py::array& indices, const py::array& values, bool bfloat16, int threads) {
                const IndexType itype = index_type(indices);
                const ValueType vtype = value_type(values, bfloat16, "values");
                if (indices.ndim() != 2)
                    throw py::value_error("indices must be 2-D [N, k]; got shape " + shape_of(indices));
                if (values.ndim() != 2 || values.shape(0) != indices.shape(0) || values.shape(1) != indices.shape(1))
                    throw py::value_error("values must have the shape of indices " + shape_of(indices) + "; got " +
                                          shape_of(values));
                const void* idx = indices.data();
                const void* val = values.data();
                const size_t n = size_t(indices.size()), k = size_t(indices.shape(1));
                try {
                    py::gil_scoped_release nogil;
                    h.fill_sparse(idx, itype, val, vtype, n, threads);
                } catch (const pyfloor::IndexOutOfRange& e) {
                    throw py::value_error("indices[" + std::to_string(e.position / k) + ", " +
                                          std::to_string(e.position % k) + "] = " + std::to_string(e.value) +
                                          " is outside [0, " + std::to_string(h.n_features()) +
                                          "); nothing was counted");
                }
            },
            "indices"_a.noconvert(), "values"_a.noconvert(), py::kw_only(), "bfloat16"_a = false, "threads"_a = 1,
            "Count values[n, j] in the histogram of feature indices[n, j] ([N, k] int32/int64 and values).")
        .def(
            "fill_dense",
            [](FeatureHistograms& h, const py::array& values, bool bfloat16, int threads) {
                const ValueType type = value_type(values, bfloat16, "values");
                if (values.ndim() != 2 || size_t(values.shape(1)) != h.n_features())
                    throw py::value_error("values must be 2-D [N, " + std::to_string(h.n_features()) +
                                          "]; got shape " + shape_of(values));
                const void* data = values.data();
                const size_t rows = size_t(values.shape(0));
                py::gil_scoped_release nogil;
                h.fill_dense(data, type, rows, threads);
            },
            "values"_a.noconvert(), py::kw_only(), "bfloat16"_a = false, "threads"_a = 1,
            "Count a C-contiguous [N, n_features] array, column j into feature j.");
    add_bins_properties(feat);
}
