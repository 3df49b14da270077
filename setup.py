"""Build entry for ancis_fast.

Metadata lives in pyproject.toml. This file only adds the native operator library
`ancis_fast._C` (csrc/): a CUDAExtension when nvcc is found (CUDA_HOME, default
/usr/local/cuda) and ANCIS_CPU_ONLY is not set, a CppExtension otherwise. When the
sources are absent or torch is missing at build time the package installs without it and
falls back to the pure-torch operators at run time.
"""
from __future__ import annotations

import glob
import os
import shutil

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _cuda_home() -> str | None:
    if os.environ.get("ANCIS_CPU_ONLY", "0") not in ("", "0"):
        return None
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or "/usr/local/cuda"
    if os.path.exists(os.path.join(home, "bin", "nvcc")):
        return home
    nvcc = shutil.which("nvcc")
    return os.path.dirname(os.path.dirname(nvcc)) if nvcc else None


def _extensions():
    cpp_sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")) + glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    if not cpp_sources:
        return [], {}
    try:
        from torch.utils import cpp_extension
    except ImportError:  # metadata-only builds (e.g. sdist) without torch
        return [], {}

    # torch >= 2.10 headers need C++20; -g0 halves the compile time (Python's CFLAGS carry -g).
    # No FMA contraction: the kernels reproduce torch's and OpenCV's rounding step by step.
    cxx_flags = ["-O3", "-g0", "-std=c++20", "-fopenmp", "-ffp-contract=off"]
    define_macros = []
    cuda_home = _cuda_home()
    cuda_sources = sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
    if cuda_home and cuda_sources:
        os.environ.setdefault("CUDA_HOME", cuda_home)
        cpp_extension.CUDA_HOME = cuda_home
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        define_macros.append(("WITH_CUDA", None))
        ext = cpp_extension.CUDAExtension(
            "ancis_fast._C",
            cpp_sources + cuda_sources,
            define_macros=define_macros,
            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "-std=c++20"]},
            extra_link_args=["-fopenmp"],
        )
    else:
        ext = cpp_extension.CppExtension(
            "ancis_fast._C",
            cpp_sources,
            define_macros=define_macros,
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=["-fopenmp"],
        )
    return [ext], {"build_ext": cpp_extension.BuildExtension.with_options(no_python_abi_suffix=True)}


ext_modules, cmdclass = _extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
