"""Build the C++ histogram extension ``pyfloor._hist``; everything else is declared in pyproject.toml.

The fill kernels carry their own AVX-512/AVX2/baseline clones (chosen at load time), so the build
itself targets the baseline CPU and runs anywhere.
"""

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import setup

hist = Pybind11Extension(
    "pyfloor._hist",
    sources=["csrc/binding.cpp", "csrc/histograms.cpp"],
    depends=["csrc/histograms.hpp", "csrc/logbins.hpp"],
    include_dirs=["csrc"],
    cxx_std=17,
    extra_compile_args=["-O3", "-fopenmp-simd", "-pthread"],
    extra_link_args=["-pthread"],
)

setup(ext_modules=[hist], cmdclass={"build_ext": build_ext})
