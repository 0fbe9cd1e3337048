"""CPU schedule rules for a model's float operators: everything TVM legalizes that is not a lowbit kernel.

Relax legalizes attention matmuls, softmax, LayerNorm, GELU, adds and transposes to TensorIR with one loop nest
per operator and no schedule: one thread, scalar code. After FuseOps / FuseTIR group them (an elementwise chain
into one function, a matmul with its scale-and-mask epilogue), these rules give each function a CPU schedule.

Each rule has one job: ``apply(func, target, parallel=True) -> Schedule | None`` (None: not mine); ``target``
is a :class:`~lowbit.compiler.target.TargetInfo` (its ``vector_lanes`` sets the vector width); ``parallel=False``
builds the same schedule on one thread (``ScheduleFloatOps`` picks between the two by :func:`work`). :data:`RULES`
lists them in priority order, ending in :class:`Fallback`, which only parallelizes.

Shapes are often symbolic (``batch``, ``seq``). TVM 0.27 scalarizes a vector loop under a predicate on x86 (no
masked stores), so the rules vectorize only loops of a known extent that is a multiple of the vector width, and
leave a loop of symbolic extent to LLVM's loop vectorizer (which adds a scalar remainder loop). A matmul dimension
of symbolic extent is padded to whole register tiles instead (see :class:`FloatMatmul`).
"""
import dataclasses

from lowbit.compiler.tvm_api import Analyzer, Schedule, ScheduleError, tirx

_SPATIAL, _REDUCE = tirx.IterVar.DataPar, tirx.IterVar.CommReduce
_PARTITION_HINT = "pragma_loop_partition_hint"


def _root_blocks(sch):
    return list(sch.get_child_blocks(sch.get_sblock("root")))


def _iter_types(sch, block):
    return [iv.iter_type for iv in sch.get(block).iter_vars]


def _is_spatial(sch, block):
    return all(kind == _SPATIAL for kind in _iter_types(sch, block))


def _is_reduction(sch, block):
    return set(_iter_types(sch, block)) == {_SPATIAL, _REDUCE}


def _static(extent):
    """The extent as an int, or None when it is symbolic."""
    return int(extent) if isinstance(extent, tirx.IntImm) else None


def _extent(sch, loop):
    return _static(sch.get(loop).extent)


def _plain_loops(sch, block):
    """The block's loops when each binds one block iter, in iter order with the same extent (how Relax
    legalizes every operator); None for any other loop nest."""
    loops = sch.get_loops(block)
    iters = sch.get(block).iter_vars
    if len(loops) != len(iters):
        return None
    analyzer = Analyzer()
    for loop, iv in zip(loops, iters):
        if not analyzer.can_prove_equal(sch.get(loop).extent, iv.dom.extent):
            return None
    return loops


def inline_elementwise(sch, keep=()):
    """Inline every spatial root block that TVM allows into its consumers (or, for a last block, itself into
    its producer), except those in ``keep``; returns the blocks left.

    Whether a block can be inlined is what ``compute_inline`` / ``reverse_compute_inline`` check (a single
    BufferStore, not an output, an injective consumer ...): their ScheduleError is the answer "no", so it is
    the only error caught.
    """
    kept = {sch.get(block).name_hint for block in keep}
    progress = True
    while progress:
        progress = False
        for block in _root_blocks(sch):
            if sch.get(block).name_hint in kept or not _is_spatial(sch, block):
                continue
            for inline in (sch.compute_inline, sch.reverse_compute_inline):
                try:
                    inline(block)
                except ScheduleError:
                    continue
                progress = True
                break
    return _root_blocks(sch)


def vectorize_inner(sch, loop, lanes):
    """Vectorize ``loop`` in chunks of ``lanes`` when its extent is a known multiple of ``lanes`` (or a known
    extent up to ``lanes``: one vector); returns whether it did.

    A symbolic extent is left to LLVM's loop vectorizer, which adds a scalar remainder loop: TVM would split it
    into whole vectors plus a predicated tail chunk, and a predicated vector loop is scalarized by TVM 0.27 on
    x86 (no masked stores), which at a row of 1 costs 16 checked iterations instead of one.
    """
    extent = _extent(sch, loop)
    if extent is None or extent < 2 or extent > lanes and extent % lanes:
        return False
    if extent <= lanes:
        sch.vectorize(loop)
    else:
        sch.vectorize(sch.split(loop, [None, lanes])[1])
    return True


def parallel_outer(sch, loops, parallel=True):
    """Fuse ``loops`` (outermost first, spatial) into one loop, parallel unless ``parallel`` is False; returns it
    (None for no loops).

    Only loops outside the innermost dimension are fused: each parallel iteration then runs whole rows, whose
    addresses are not rebuilt from a fused index by division per element.
    """
    if not loops:
        return None
    fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    if parallel:
        sch.parallel(fused)
    return fused


def schedule_injective(sch, block, lanes, parallel=True):
    """One spatial block: its innermost loop as vectors where the extent allows, the loops outside it fused
    into one (parallel) loop. Returns False (nothing done) for a loop nest that is not one loop per block iter."""
    loops = _plain_loops(sch, block)
    if loops is None:
        return False
    vectorize_inner(sch, loops[-1], lanes)
    parallel_outer(sch, loops[:-1], parallel)
    return True


class Elementwise:
    """Functions of spatial blocks only (adds, GELU, transposes, splits): inline the chains, then each block
    left (one per output) runs its outer loops in parallel and its innermost loop as vectors."""

    name = "elementwise"

    def apply(self, func, target, parallel=True):
        sch = Schedule(func)
        if not all(_is_spatial(sch, block) for block in _root_blocks(sch)):
            return None
        for block in inline_elementwise(sch):
            if not schedule_injective(sch, block, target.vector_lanes, parallel):
                return None
        return sch


def _leading_spatial(sch, block):
    kinds = _iter_types(sch, block)
    count = 0
    while count < len(kinds) and kinds[count] == _SPATIAL:
        count += 1
    return count


def _row_axes(sch, block):
    """The leading spatial iters that index rows: a reduction's trailing unit iters (a ``keepdims`` reduction's
    (rows, 1) output, as RMSNorm's ``mean(x * x, -1, keepdims=True)``) are not rows of the blocks that read it.

    Counting that unit iter made the row loop of RMSNorm's last block run over every element, with the row's
    reduction computed under it once per element: 576 times the work (0.23 ms for 16 x 576).
    """
    count = _leading_spatial(sch, block)
    if _is_reduction(sch, block):
        iters = sch.get(block).iter_vars
        while count > 1 and _static(iters[count - 1].dom.extent) == 1:
            count -= 1
    return count


def _row_shaped(sch, block):
    """Spatial iters, then (for a reduction) only reduction iters: ``S..S R..R``."""
    kinds = _iter_types(sch, block)
    lead = _leading_spatial(sch, block)
    return lead > 0 and all(kind == _REDUCE for kind in kinds[lead:])


def inline_single_use(sch):
    """Inline spatial root blocks read by exactly one other block (a chain like ``x - max`` -> ``exp``);
    blocks read by several (softmax's ``exp``: by the sum and by the division) stay, computed once per row."""
    progress = True
    while progress:
        progress = False
        for block in _root_blocks(sch):
            if not _is_spatial(sch, block) or len(sch.get_consumers(block)) != 1:
                continue
            try:
                sch.compute_inline(block)
            except ScheduleError:  # not inlinable (e.g. an output): the block stays
                continue
            progress = True
    return _root_blocks(sch)


def _split_reduction(sch, block, lanes):
    """rfactor a reduction over a row (its last loop) into ``lanes`` partial reductions, one vector accumulator
    instead of a loop-carried scalar chain, and a final reduction over them. Returns the partial block, or
    None (left as it is).

    Only for a known row length that is a multiple of ``lanes``: a ragged split puts a predicate on the
    partial block, and compute_at (which then moves it under the row loop) drops block predicates.
    """
    if not _is_reduction(sch, block):
        return None
    reduce = sch.get_loops(block)[-1]
    extent = _extent(sch, reduce)
    if extent is None or extent % lanes or extent < 2 * lanes:
        return None
    _, lane = sch.split(reduce, [None, lanes])
    return sch.rfactor(lane, factor_axis=_leading_spatial(sch, block))


def _vectorize_row(sch, block, lanes, partial):
    """Vectorize ``block``'s loop over the row. Every block sits under the one parallel row loop, and compute_at
    left one loop per block iter not bound by it, in iter order. A partial reduction has two, (lane, chunk):
    the chunk loop goes outside and the lanes become the vector accumulator."""
    under = sch.get_loops(block)[1:]
    if partial and len(under) == 2:
        lane, chunk = under
        sch.reorder(chunk, lane)
        sch.vectorize(lane)
        sch.decompose_reduction(block, chunk)  # the accumulator's init: one vector store before the chunks
    elif _is_spatial(sch, block) and under:
        vectorize_inner(sch, under[-1], lanes)


def _row_groups(sch, blocks, rows):
    """Split the blocks (in order) into groups that each end in a spatial block owning a parallel row loop:
    the last block, and every spatial block read twice whose row length is symbolic (softmax's ``exp``).

    The blocks before an owner are computed at its row loop, so their intermediates shrink to one row; a row
    of symbolic length would be allocated per row inside the parallel loop (a workspace call per row, 3x the
    time of the whole softmax), so such a block keeps its full buffer and gets a row loop of its own.
    """
    groups, current = [], []
    for index, block in enumerate(blocks):
        current.append(block)
        symbolic_row = any(_extent(sch, loop) is None for loop in sch.get_loops(block)[rows:])
        owner = _is_spatial(sch, block) and symbolic_row and len(sch.get_consumers(block)) > 1
        if owner or index == len(blocks) - 1:
            groups.append(current)
            current = []
    return groups


class RowReduction:
    """Row-wise reductions with elementwise steps (softmax, LayerNorm, RMSNorm, a residual add fused before):
    every block shares leading spatial axes (the rows) and reduces, if at all, over its trailing axes.

    The rows run in parallel; the blocks are computed at the row (their intermediates one row long; see
    :func:`_row_groups` for the exception), reductions over a row of known length as vector partial sums
    (:func:`_split_reduction`), every innermost spatial loop vectorized where the row length allows.
    """

    name = "row_reduction"

    def apply(self, func, target, parallel=True):
        sch = Schedule(func)
        blocks = inline_single_use(sch)
        if not any(_is_reduction(sch, block) for block in blocks) or not _is_spatial(sch, blocks[-1]):
            return None
        if not all(_row_shaped(sch, block) and _plain_loops(sch, block) is not None for block in blocks):
            return None
        rows = min(_row_axes(sch, block) for block in blocks)
        lanes = target.vector_lanes
        partial_names = set()
        for block in blocks:
            partial = _split_reduction(sch, block, lanes)
            if partial is not None:
                partial_names.add(sch.get(partial).name_hint)
        for group in _row_groups(sch, _root_blocks(sch), rows):
            row = parallel_outer(sch, sch.get_loops(group[-1])[:rows], parallel)
            for block in reversed(group[:-1]):
                sch.compute_at(block, row)
            for block in sch.get_child_blocks(row):
                _vectorize_row(sch, block, lanes, sch.get(block).name_hint in partial_names)
        return sch


class FullReduction:
    """A reduction of a whole tensor to one value (the max and min of onnxruntime's DynamicQuantizeLinear, a
    ReduceMax / ReduceSum without axes): one parallel reduction per row (the leading axes, fused), each a vector of
    partial results over the row's last axis (:func:`_split_reduction`), then a short serial reduction of the
    rows' results. Only for a last axis of known length that is a multiple of the vector width.

    Unscheduled, the max of a 32 x 16 x 4096 activation took 2.6 ms on one thread, scalar.
    """

    name = "full_reduction"

    def apply(self, func, target, parallel=True):
        sch = Schedule(func)
        blocks = inline_single_use(sch)
        if len(blocks) != 1 or set(_iter_types(sch, blocks[0])) != {_REDUCE}:
            return None
        loops = _plain_loops(sch, blocks[0])
        lanes = target.vector_lanes
        if loops is None or len(loops) < 2:
            return None
        extent = _extent(sch, loops[-1])
        if extent is None or extent % lanes or extent < 2 * lanes:
            return None
        rows = sch.fuse(*loops[:-1]) if len(loops) > 2 else loops[0]
        per_row = sch.rfactor(rows, factor_axis=0)
        partial = _split_reduction(sch, per_row, lanes)
        row = parallel_outer(sch, sch.get_loops(per_row)[:1], parallel)
        sch.compute_at(partial, row)
        _vectorize_row(sch, partial, lanes, True)
        return sch


@dataclasses.dataclass(frozen=True)
class MatmulConfig:
    """Knobs of :class:`FloatMatmul`: the register tile is ``rows`` x (``vectors`` x lanes) accumulators."""

    rows: int = 4
    vectors: int = 2

    @classmethod
    def for_target(cls, target):
        """8 x 2 accumulators where AVX-512 gives 32 vector registers (measured 10-25% faster than 4 x 2 on
        attention's matmuls, head_dim 64 and 512), 4 x 2 with AVX2's 16."""
        return cls(rows=8) if target.simd == "avx512" else cls()


def _region_vars(region):
    found = set()
    for rng in region.region:
        found |= set(tirx.analysis.undefined_vars(rng.min))
    return found


def _matmul_axes(sch, block):
    """Each iter of a ``C[.., i, j] += A[.., i, k] * B[.., k, j]`` block as "S" (batch: in A, B and C), "I" (A, C),
    "J" (B, C) or "K" (reduced, in A and B), any layout; None when the block is no such float32 product."""
    stmt = sch.get(block)
    if len(stmt.reads) != 2 or len(stmt.writes) != 1 or str(stmt.writes[0].source.dtype) != "float32":
        return None
    value = stmt.body.value if isinstance(stmt.body, tirx.BufferStore) else None
    if not isinstance(value, tirx.Add) or not any(isinstance(arm, tirx.Mul) for arm in (value.a, value.b)):
        return None
    in_a, in_b = (_region_vars(read) for read in stmt.reads)
    in_c = _region_vars(stmt.writes[0])
    kinds = []
    for iv in stmt.iter_vars:
        where = (iv.var in in_a, iv.var in in_b, iv.var in in_c)
        spatial = {(True, True, True): "S", (True, False, True): "I", (False, True, True): "J"}
        kind = spatial.get(where) if iv.iter_type == _SPATIAL else "K" if where == (True, True, False) else None
        if kind is None:
            return None
        kinds.append(kind)
    return kinds if {"I", "J", "K"} <= set(kinds) else None


def _tile(extent, choices):
    """The tile for a dimension: the whole of a known ``extent`` up to ``choices[-1]``, else the first of
    ``choices`` dividing it; None (pad to ``choices[0]``) when none does or the extent is symbolic."""
    if extent is None:
        return None
    if extent <= choices[-1]:
        return extent
    return next((choice for choice in choices if extent % choice == 0), None)


class FloatMatmul:
    """Float32 matmuls (attention's ``Q K^T`` and ``P V``, a float Linear) with the epilogue FuseOps gave them
    (scale, mask add, bias): a register tile of ``rows`` x ``vectors * lanes`` accumulators per step of K,
    the tiles in parallel, the epilogue applied as the tile is written back.

    A dimension of unknown (or ragged) length is padded to whole tiles (``pad_einsum``): the rows of A are read
    through a bounds check, B's columns are copied into a zero-padded buffer (a bounds check there would be
    per vector lane, which TVM scalarizes), and the write-back checks bounds, its column tail peeled off by
    LoopPartition.
    """

    name = "float_matmul"

    def apply(self, func, target, parallel=True, config=None):
        config = config or MatmulConfig.for_target(target)
        sch = Schedule(func)
        reductions = [block for block in _root_blocks(sch) if not _is_spatial(sch, block)]
        if len(reductions) != 1:
            return None
        main = reductions[0]
        kinds = _matmul_axes(sch, main) if _is_reduction(sch, main) else None
        if kinds is None or _plain_loops(sch, main) is None:
            return None
        lanes = target.vector_lanes
        i_axis, j_axis = len(kinds) - 1 - kinds[::-1].index("I"), len(kinds) - 1 - kinds[::-1].index("J")
        extents = [_static(iv.dom.extent) for iv in sch.get(main).iter_vars]
        rows = _tile(extents[i_axis], (config.rows,)) or config.rows
        cols = _tile(extents[j_axis], (config.vectors * lanes, lanes))
        pad_j = cols is None
        cols = cols or config.vectors * lanes
        padding = [1] * len(kinds)
        padding[i_axis], padding[j_axis] = rows, cols
        pad_i = extents[i_axis] is None or extents[i_axis] % rows
        a_pad, b_pad = self._pad(sch, main, padding) if pad_i or pad_j else (None, None)
        inline_elementwise(sch, keep=[block for block in (main, a_pad, b_pad) if block is not None])
        tile = self._tile_main(sch, main, kinds, (i_axis, j_axis), (rows, cols, lanes), pad_j, parallel)
        if a_pad is not None:
            # A's rows of one tile, bounds-checked once into a stack buffer (the K loop then reads it unchecked)
            sch.compute_at(a_pad, tile)
            sch.set_scope(a_pad, 0, "local")
            vectorize_inner(sch, sch.get_loops(a_pad)[-1], lanes)
        if b_pad is not None:
            schedule_injective(sch, b_pad, lanes, parallel)  # B's rows: a bounds check per element (LLVM vectorizes)
        return sch

    @staticmethod
    def _pad(sch, main, padding):
        """pad_einsum to whole tiles; returns the blocks copying A and B into their padded buffers (None: not
        padded)."""
        before = {sch.get(block).name_hint for block in _root_blocks(sch)}
        sch.pad_einsum(main, padding)
        a_name, b_name = (read.source.name for read in sch.get(main).reads)
        added = {sch.get(block).writes[0].source.name: block for block in _root_blocks(sch)
                 if sch.get(block).name_hint not in before}
        return added.get(a_name), added.get(b_name)

    @staticmethod
    def _tile_main(sch, main, kinds, axes, tile, pad_j, parallel):
        """Register-tile ``main``; returns the (parallel) loop over tiles."""
        (i_axis, j_axis), (rows, cols, lanes) = axes, tile
        loops = sch.get_loops(main)
        outer = [loop for loop, kind in zip(loops, kinds) if kind == "S"]
        outer += [loop for axis, (loop, kind) in enumerate(zip(loops, kinds)) if kind in "IJ" and axis not in
                  (i_axis, j_axis)]
        reduce = [loop for loop, kind in zip(loops, kinds) if kind == "K"]
        tile_i, row = sch.split(loops[i_axis], [None, rows])
        tile_j, col = sch.split(loops[j_axis], [None, cols])
        sch.reorder(*outer, tile_i, tile_j, *reduce, row, col)
        acc = sch.cache_write(main, 0, "local")
        sch.reverse_compute_at(acc, tile_j)
        while sch.get_consumers(acc):
            sch.reverse_compute_inline(sch.get_consumers(acc)[0])
        if cols > lanes:
            col_vectors, col = sch.split(col, [None, lanes])
            sch.unroll(col_vectors)
        sch.vectorize(col)
        sch.unroll(row)
        vectorize_inner(sch, sch.get_loops(acc)[-1], lanes)
        if pad_j:
            # the last column tile's write-back checks bounds per lane: peel it off, the others stay vectors
            sch.annotate(tile_j, _PARTITION_HINT, 1)
            tile = parallel_outer(sch, outer + [tile_i], parallel)
        else:
            tile = parallel_outer(sch, outer + [tile_i, tile_j], parallel)
        sch.decompose_reduction(main, reduce[0])
        return tile


class Fallback:
    """Any other function: each block's leading spatial loops (those outside its innermost loop) run in
    parallel; nothing is inlined or reordered, so whatever the blocks compute, the result is the same."""

    name = "fallback"

    def apply(self, func, target, parallel=True):
        sch = Schedule(func)
        blocks = _root_blocks(sch)
        if not blocks or any(_plain_loops(sch, block) is None for block in blocks):
            return None
        for block in blocks:
            loops = sch.get_loops(block)
            leading = min(_leading_spatial(sch, block), len(loops) - 1)
            parallel_outer(sch, loops[:leading], parallel)
        return sch


RULES = (FloatMatmul(), RowReduction(), FullReduction(), Elementwise(), Fallback())

# Below this much work (block instances, see :func:`work`) a function runs its single-thread schedule: waking
# the second core costs about 1 us, more on a loaded machine. Measured on the 2-core development machine: an
# elementwise op over 8 K floats took 0.8 us on one thread and 1.1 us on two, over 64 K floats 23 us and 15 us;
# at M = 1 the decoder demo ran 15% slower with every float operator parallel.
PARALLEL_MIN_WORK = 1 << 16


def work(func):
    """The work of an unscheduled function: its block instances (per block, the product of its iter extents),
    summed; an expression in the function's symbolic sizes."""
    sch = Schedule(func)
    total = tirx.const(0, "int64")
    for block in _root_blocks(sch):
        instances = tirx.const(1, "int64")
        for iv in sch.get(block).iter_vars:
            instances = instances * tirx.Cast("int64", iv.dom.extent)
        total = total + instances
    return Analyzer().simplify(total)


def has_parallel_loop(sch):
    """Whether a schedule made any loop parallel."""
    return any(sch.get(loop).kind == tirx.ForKind.PARALLEL
               for block in _root_blocks(sch) for loop in sch.get_loops(block))
