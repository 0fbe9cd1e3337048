"""lowbit's runtime: load an artifact and run it with TVM's runtime library only.

``import lowbit.runtime`` imports neither TVM nor anything from the compiler; TVM (runtime-only) is
imported by the first :func:`load`.

>>> import lowbit.runtime
>>> model = lowbit.runtime.load("mlp.lowbit")
>>> y = model(x)              # x: float32 NumPy array (M, K)
"""
from lowbit.runtime.module import Module, load

__all__ = ["Module", "load"]
