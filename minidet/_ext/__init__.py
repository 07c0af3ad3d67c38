"""Compiled CPU kernels (Cython), built by setup.py during `pip install -e .`."""
