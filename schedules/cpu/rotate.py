"""CPU schedule rule for the HIGGS activation rotation (template in compiler/kernels_rotate.py).

Rows x groups are one parallel loop; every butterfly stage is computed per (row, group) into a G-element
scratch (``compute_at``), its loop vectorised, so the transform touches each activation a few times in L1.
"""
import dataclasses

from lowbit.compiler import kernels_rotate
from lowbit.compiler.tvm_api import Schedule


@dataclasses.dataclass(frozen=True)
class RotateConfig:
    """Knobs of :class:`HadamardRotate`: none yet (the rotation is a few percent of a layer's time)."""


class HadamardRotate:
    """Parallel over (row, group); stages computed at that loop and vectorised."""

    name = "hadamard_rotate"

    def template(self, K, group_size, M):
        return kernels_rotate.rotate_compute(K, group_size, M)

    def apply(self, func, target, config=RotateConfig()):
        sch = Schedule(func)
        root = sch.get_sblock("root")
        blocks = {sch.get(b).name_hint: b for b in sch.get_child_blocks(root)}
        if "XR" not in blocks or "stage0" not in blocks:
            return None
        group = int(sch.get(blocks["stage0"]).writes[0].source.shape[2])
        m, k = sch.get_loops(blocks["XR"])
        g, i = sch.split(k, [None, group])
        rows = sch.fuse(m, g)
        sch.parallel(rows)
        sch.vectorize(i)
        stages = sorted((name for name in blocks if name.startswith("stage")), key=lambda n: int(n[5:]))
        for name in reversed(stages):
            sch.compute_at(blocks[name], rows)
            sch.vectorize(sch.get_loops(blocks[name])[-1])
        return sch
