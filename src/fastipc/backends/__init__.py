"""Interchangeable implementations of the public classes: native (cffi) and python."""
