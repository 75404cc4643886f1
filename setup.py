"""The compiled integer kernels (src/intrs/csrc/), one shared library loaded with ctypes by intrs.kernels.

Each instruction set's file is compiled with its own target flags and no other file is, so code built for
instructions a CPU may lack lives only in those files, behind the tables that csrc/dispatch.c hands out at
run time: the library is not tied to the build CPU. ``optional=True``: where no C compiler is found the
install still succeeds and intrs runs its pure-PyTorch reference engine.
"""

import platform
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

CSRC = Path("src/intrs/csrc")
COMMON_FLAGS = ["-O3", "-std=c11", "-Wall", "-pthread"]


def target_flags(machine: str) -> dict[str, list[str]]:
    """csrc/targets.txt: per source file, the instructions it alone may use on this machine."""
    flags = {}
    for line in (CSRC / "targets.txt").read_text().splitlines():
        words = line.split("#", 1)[0].split()
        if len(words) >= 2 and words[0] == machine:
            flags[words[1]] = words[2:]
    return flags


class BuildKernels(build_ext):
    """build_ext with flags per source file (setuptools gives one set of flags to a whole extension).

    An instruction set's file that this compiler cannot build (an older compiler without -mavxvnni, say) is
    left out with a warning, and the others are told (INTRS_WITHOUT_<FILE>), so dispatch.c never hands out its
    table: the library then runs the other instruction sets, instead of the whole build failing."""

    def build_extension(self, ext):
        from setuptools.errors import CompileError  # distutils is gone from Python 3.12

        # targets.txt names machines as Linux does (macOS and Windows say arm64 and amd64): on macOS the NEON
        # files then get their flags (dispatch.c detects no features there, so only portable is granted)
        flags = target_flags({"amd64": "x86_64", "arm64": "aarch64"}.get(platform.machine().lower(),
                                                                          platform.machine().lower()))
        targeted = [source for source in ext.sources if Path(source).name in flags]
        objects, missing = [], []
        for source in targeted:
            try:
                objects += self._compile(ext, source, flags[Path(source).name], [])
            except CompileError:
                missing.append(Path(source).stem.upper())
                print(f"warning: this compiler cannot build {source} with {' '.join(flags[Path(source).name])}: "
                      "those kernels are left out (a newer gcc or clang builds them)")
        macros = [(f"INTRS_WITHOUT_{name}", "1") for name in missing]
        for source in ext.sources:
            if source not in targeted:
                objects += self._compile(ext, source, [], macros)
        self.compiler.link_shared_object(objects, self.get_ext_fullpath(ext.name), extra_postargs=["-pthread"],
                                         target_lang="c")

    def _compile(self, ext, source, flags, macros):
        return self.compiler.compile([source], output_dir=self.build_temp, include_dirs=[str(CSRC)],
                                     macros=macros, extra_postargs=COMMON_FLAGS + flags, depends=ext.depends)


# the kernels, and the peak loops intrs bench reads its ratios against (float code: kept out of csrc/)
sources = sorted(str(path) for path in CSRC.glob("*.c")) + [str(CSRC.parent / "peak" / "peak.c")]
depends = sorted(str(path) for path in CSRC.glob("*.h")) + [str(CSRC / "targets.txt")]
setup(ext_modules=[Extension("intrs._kernels", sources=sources, depends=depends, optional=True)],
      cmdclass={"build_ext": BuildKernels})
