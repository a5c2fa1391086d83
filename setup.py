"""Build hook: compiles the C symmetry-function and Gaussian kernels through cffi."""
from setuptools import setup

setup(cffi_modules=["ckernels/build.py:ffibuilder"])
