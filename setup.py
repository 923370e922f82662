"""Only what pyproject.toml cannot say: the cffi extension modules, built as abi3."""

from setuptools import setup

setup(
    cffi_modules=["build_ffi.py:ffi", "build_ffi.py:ffi_fast"],
    # The C never includes Python.h and cffi emits limited-API glue, so one
    # wheel serves every CPython from 3.9 on.
    options={"bdist_wheel": {"py_limited_api": "cp39"}},
)
