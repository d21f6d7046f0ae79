"""Errors, shared names, progress, the TensorFlow shim and the run directory's files."""
