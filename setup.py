"""The compiled integer kernels (src/intrs/_kernels.c), loaded with ctypes by intrs.kernels.

``optional=True``: where no C compiler is found the install still succeeds and
intrs runs its pure-PyTorch reference engine. Instruction sets are chosen at run
time (AVX-512 VNNI or portable C), so the library is not tied to the build CPU.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("intrs._kernels", sources=["src/intrs/_kernels.c"], optional=True,
                             extra_compile_args=["-O3", "-std=c11", "-Wall"])])
