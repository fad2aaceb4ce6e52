// Python binding of the pyfloor C++ core: the only file that knows about Python.
#include <pybind11/pybind11.h>

namespace py = pybind11;

PYBIND11_MODULE(_hist, m) {
    m.doc() = "pyfloor C++ core: streaming, mergeable activation histograms.";
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
            return info;
        },
        "Compiler and language standard the extension was built with.");
}
