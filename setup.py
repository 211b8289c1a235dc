"""Build the compiled core: every ext/datasync/_core/*.pyx becomes a
private module datasync._core.<name>. Metadata lives in pyproject.toml."""

import pathlib
import sys

from setuptools import setup

try:
    from Cython.Build import cythonize
except ImportError:
    sys.exit(
        "datasync needs Cython to compile its core: pip install 'Cython>=3.0'"
        " (pip installs it on its own when building from pyproject.toml)")

EXT_DIR = pathlib.Path("ext")


def _extensions():
    from setuptools import Extension

    sources = sorted(EXT_DIR.glob("datasync/_core/*.pyx"))
    if not sources:
        sys.exit(f"no .pyx sources under {EXT_DIR}/datasync/_core")
    modules = []
    for source in sources:
        name = ".".join(source.relative_to(EXT_DIR).with_suffix("").parts)
        modules.append(Extension(name, [str(source)],
                                 extra_compile_args=["-O2"]))
    return modules


def _check_compiler():
    from setuptools._distutils.ccompiler import new_compiler
    from setuptools._distutils.sysconfig import customize_compiler
    import shutil

    compiler = new_compiler()
    customize_compiler(compiler)
    executable = compiler.compiler_so[0] if compiler.compiler_so else "cc"
    if shutil.which(executable) is None:
        sys.exit(
            f"datasync needs a C compiler to build its core, and "
            f"{executable!r} was not found: install gcc and the Python "
            "headers (Debian: apt-get install build-essential python3-dev)")


if "egg_info" not in sys.argv and "dist_info" not in sys.argv:
    _check_compiler()

setup(
    ext_modules=cythonize(
        _extensions(),
        include_path=[str(EXT_DIR)],
        compiler_directives={"language_level": "3"},
    ),
)
