"""Custom TensorIR intrinsics (``TensorIntrin``): description from the reference expression, host implementation."""
