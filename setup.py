"""Build the C++ histogram extension ``pyfloor._hist``; everything else is declared in pyproject.toml."""

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import setup

hist = Pybind11Extension(
    "pyfloor._hist",
    sources=["csrc/binding.cpp"],
    include_dirs=["csrc"],
    cxx_std=17,
    extra_compile_args=["-O3", "-fopenmp-simd"],
)

setup(ext_modules=[hist], cmdclass={"build_ext": build_ext})
