"""The tunable space of each CPU schedule rule, and how a tuning record is matched to a layer.

A candidate is ``(rule, config)``: a rule object and one of its frozen config dataclasses. Spaces are
small and listed exhaustively (the cost model ranks them, the tuner measures the best-ranked):

- ``decode_a8`` (:class:`~lowbit.schedules.cpu.a8.DecodeA8`): the register block ``m_tile`` in {1, 2, 4, 6, 8,
  12, 16} (at most the bucket's largest M) x ``n_tile`` in {1, 2, 4} (dividing the layer's column tiles); the
  loop order inside the block, ``rows_outer`` (only where both tiles exceed 1: else both orders are one);
  ``unroll_words`` (only where a group has more than one word). At most 66 candidates per bucket (6 at
  M = 1); the intrinsic is always used (without it the kernel is the slow reference).
- ``decode_accumulate``: ``partials`` in {1, 2, 4, 8} dividing the codes per word (0 stands for one per code
  slot, the rule's default), ``m_tile`` in {1, 2, 4}, at most the bucket's largest M.
- ``decode_dequant_tile``: ``m_tile`` in {2, 4, 6, 8} (at most the bucket's largest M), ``n_vectors`` in
  {1, 2, 3}.
- ``lut_lookup`` (:class:`~lowbit.schedules.cpu.lut.LutLookup`): ``tiles`` in {1, 2, 4} (dividing the layer's
  row tiles, keeping at least ``lut.MIN_PARALLEL`` iterations of the parallel loop) x ``chunk_unroll``
  in {1, 2, 4, 8} (dividing the chunks per table group), with the default's lookup. At most 12 candidates.

A record applies to a layer when its workload has the layer's N, K, bucket and kernel family, and its format
has the layer's kernel layout (code storage bits, group size, decode kind): the kernel code is then the
same (``w4g128`` and ``w4g128s`` share one, as do ``nf4g64`` and ``fp4g64`` under ``decode``). A ``lut`` record
also needs the same kind of weight (bit planes or codebook codes) and the default lut parameters (g = 4, int8
tables), which are what the tuner measures.
"""
import dataclasses
import functools
import warnings

from lowbit.compiler.formats import kernel_format
from lowbit.compiler.intrinsics.x86_dot import storage_bits
from lowbit.compiler.layout import LutParams
from lowbit.schedules.cpu import a8, decode, lut
from lowbit.schedules.tuning.records import best_record, config_key

# rule name -> (rule class, config class)
RULES = {
    "decode_a8": (a8.DecodeA8, a8.A8Config),
    "decode_accumulate": (decode.DecodeAccumulate, decode.AccumulateConfig),
    "decode_dequant_tile": (decode.DecodeDequantTile, decode.DequantTileConfig),
    "lut_lookup": (lut.LutLookup, lut.LutConfig),
}
A8_M_TILES = (1, 2, 4, 6, 8, 12, 16)
A8_N_TILES = (1, 2, 4)
ACCUMULATE_PARTIALS = (1, 2, 4, 8)
ACCUMULATE_M_TILES = (1, 2, 4)
DEQUANT_M_TILES = (2, 4, 6, 8)
DEQUANT_N_VECTORS = (1, 2, 3)


def kernel_of(layout):
    """The kernel family a layout belongs to: ``a8``, ``lut`` or ``decode``."""
    return layout.decode if layout.decode in ("a8", "lut") else "decode"


def _fits(bucket, m_tile):
    return bucket.hi is None or m_tile <= bucket.hi


def space(layout, bucket):
    """Every candidate ``(rule, config)`` for one layer layout and M bucket, in a fixed order."""
    if layout.decode == "a8":
        return _a8_space(layout, bucket)
    if layout.decode == "lut":
        return _lut_space(layout)
    accumulate, dequant = decode.DecodeAccumulate(), decode.DequantTileConfig
    per_word = layout.codes_per_word
    partials = [0] + [p for p in ACCUMULATE_PARTIALS if per_word % p == 0 and p != per_word]
    candidates = [(accumulate, decode.AccumulateConfig(partials=p, m_tile=m))
                  for m in ACCUMULATE_M_TILES if _fits(bucket, m) for p in partials]
    tile = decode.DecodeDequantTile()
    candidates += [(tile, dequant(m_tile=m, n_vectors=v))
                   for m in DEQUANT_M_TILES if _fits(bucket, m) for v in DEQUANT_N_VECTORS]
    return candidates


def _a8_space(layout, bucket):
    rule, candidates = a8.DecodeA8(), []
    unrolls = (False, True) if layout.words_per_group > 1 else (False,)
    for m in (m for m in A8_M_TILES if _fits(bucket, m)):
        for n in (n for n in A8_N_TILES if layout.n_tiles % n == 0):
            orders = (False, True) if m > 1 and n > 1 else (False,)
            candidates += [(rule, a8.A8Config(m_tile=m, n_tile=n, rows_outer=order, unroll_words=unroll))
                           for order in orders for unroll in unrolls]
    return candidates


def _lut_space(layout):
    rule, default = lut.LutLookup(), lut.default_config(layout)
    return [(rule, dataclasses.replace(default, tiles=t, chunk_unroll=u))
            for t in lut.tile_counts(layout) for u in lut.CHUNK_UNROLLS if layout.chunks % u == 0]


def config_from_record(record):
    """``(rule, config)`` rebuilt from a record's ``rule`` and ``config``; ValueError when unknown."""
    if record["rule"] not in RULES:
        raise ValueError(f"unknown schedule rule {record['rule']!r} (known: {', '.join(RULES)})")
    rule_cls, config_cls = RULES[record["rule"]]
    names = {field.name for field in dataclasses.fields(config_cls)}
    unknown = sorted(set(record["config"]) - names)
    if unknown:
        raise ValueError(f"rule {record['rule']!r} has no knobs {unknown} (it has {sorted(names)})")
    return rule_cls(), config_cls(**record["config"])


@functools.lru_cache(maxsize=256)
def layout_key(format_name, kernel, K):
    """(code storage bits, group size, decode kind) of a format under a kernel family: equal keys, same code."""
    fmt = kernel_format(format_name)  # HIGGS: the kernels run its rotated form, a codebook (2-D for v2)
    dim = getattr(fmt, "dim", 1)
    if kernel == "a8":
        return storage_bits(fmt.bits), fmt.group_size or K, "a8"
    if kernel == "lut":
        return fmt.bits, fmt.group_size or K, "lut", "codebook" if fmt.kind == "codebook" else "uniform", dim
    return fmt.bits, fmt.group_size or K, "codebook" if fmt.kind == "codebook" else "affine", dim



def record_fits(record, layout, bucket):
    """Whether a record's workload names this layer's kernel (see the module docstring)."""
    workload = record["workload"]
    if (workload["N"], workload["K"], workload["bucket"], workload["kernel"]) != \
            (layout.N, layout.K, bucket.key, kernel_of(layout)):
        return False
    return layout_key(workload["format"], workload["kernel"], layout.K) == _layout_signature(layout)


def _layout_signature(layout):
    """What :func:`layout_key` says of a format, read off a built layout (None: no record applies)."""
    if layout.decode != "lut":
        if layout.decode == "a8":  # the weight's group (the layout's K-groups are the activation's)
            if layout.activation != "float32":
                return None  # the model's activation codes: another kernel than the one records measure
            return layout.bits, layout.group_size * layout.scale_ratio, layout.decode
        return layout.bits, layout.group_size, layout.decode, layout.dim
    if layout.params != LutParams():
        return None
    return layout.bits, layout.group_size, "lut", layout.kind, layout.dim


def within_space(database, records, layout, bucket, default_key):
    """The ``records`` whose (rule, config) is the default (``default_key``, a :func:`config_key`) or a
    candidate of :func:`space` for this layer and bucket.

    Any other is skipped with a warning naming its line: a knob outside the space (``m_tile`` 1000000, or 0)
    would build a kernel that exhausts memory or fails inside TVM.
    """
    allowed = {config_key(rule.name, dataclasses.asdict(config)) for rule, config in space(layout, bucket)}
    allowed.add(default_key)
    kept = []
    for record in records:
        if config_key(record["rule"], record["config"]) in allowed:
            kept.append(record)
            continue
        warnings.warn(f"{database.path}, line {database.line_of(record)}: skipped a record whose schedule "
                      f"{record['rule']} {record['config']} is not in that rule's space for the "
                      f"{layout.N}x{layout.K} layer's bucket {bucket.key} (lowbit tunes only that space; was the "
                      "log edited by hand?)", stacklevel=3)
    return kept


def tuned_plan(database, layout, bucket, default_rule, default_config):
    """``(rule, config)`` of the best record for a layer's bucket that beats the default, or None.

    A record whose format does not parse, or whose rule and knobs are not a candidate of this layer's space,
    is ignored with a warning (and the default plan stays).
    """
    fitting = []
    for record in database.records:
        try:
            if record_fits(record, layout, bucket):
                fitting.append(record)
        except ValueError as err:  # FormatError is a ValueError
            warnings.warn(f"{database.path}, line {database.line_of(record)}: ignored a record of format "
                          f"{record['workload']['format']!r}: {err}", stacklevel=2)
    default_key = config_key(default_rule.name, dataclasses.asdict(default_config))
    fitting = within_space(database, fitting, layout, bucket, default_key)
    record = best_record(fitting, default_rule.name, dataclasses.asdict(default_config))
    if record is None:
        return None
    try:
        return config_from_record(record)
    except (ValueError, TypeError) as err:
        warnings.warn(f"{database.path}: the best record for {bucket.key} of an {layout.N}x{layout.K} layer is "
                      f"unusable ({err}): using the default schedule", stacklevel=2)
        return None
