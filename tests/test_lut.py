"""Table-lookup (``lut``) kernels against the NumPy reference with the same activation and table quantization."""
import functools

import numpy as np
import pytest

from kernel_data import row_scaled_activations, row_scaled_weight
from lowbit.compiler.dispatch import Bucket
from lowbit.compiler.formats import CodebookFormat, parse_format, quantize
from lowbit.compiler.intrinsics import x86_lut
from lowbit.compiler.kernels_lut import reference, table_rounding_bound
from lowbit.compiler.layout import LutParams, relayout_lut
from lowbit.compiler.linear import build_linear, choose_kernel
from lowbit.compiler.target import host_target, resolve_target
from lowbit.errors import KernelError

ROWS = (1, 3, 17)
N, K = 141, 384  # N odd and not a multiple of any row tile (64 or 128 rows)
EPS32 = float(np.finfo(np.float32).eps)
HOST = host_target()
HOST_ISA = x86_lut.isa_for(HOST.features)
ONE_BUCKET = (Bucket(1, None),)  # one function for every M: a quarter of the compile time of the default four

CB2 = "cb2g64[-1.5,-0.45,0.45,1.5]"  # a 2-bit codebook: two codes per 4-bit table index
CB1 = "cb1g32[-0.7,1.3]"  # four 1-bit codes per index
CB3 = "cb3g64[-2.2,-1.2,-0.6,-0.2,0.2,0.6,1.2,2.2]"  # one 3-bit code per index (entries 8-15 unused)
CB6V2 = CodebookFormat(6, 64, tuple(parse_format("higgs3g64v2").points.reshape(-1)), "cb", 2).name  # vpermb
CB8V2 = CodebookFormat(8, 64, tuple(parse_format("higgs4g64v2").points.reshape(-1)), "cb", 2).name  # vpermi2b
CB5 = "cb5g32[" + ",".join(str(v) for v in np.linspace(-2, 2, 32)) + "]"  # 5-bit codes: a 64-entry table
V2 = parse_format("higgs2g64v2").points  # a 2-D codebook: one 4-bit code per pair of weights
CB4V2 = CodebookFormat(4, 64, tuple(V2.reshape(-1)), "cb", 2).name
CB2V2 = CodebookFormat(2, 32, (-1.0, -0.2, 0.6, -0.9, 0.1, 1.0, -0.5, 0.4), "cb", 2).name  # 2 pairs per index
CASES = [  # (format, g, table bits): bits 1..4, ternary, codebooks; g 2 and 4; int8 and exact int16 tables
    ("w1g64", 4, 8), ("w2g64", 4, 8), ("w3g128", 4, 8), ("w4g128", 4, 8), ("w4g128s", 4, 8), ("ternary", 4, 8),
    ("ternaryg128", 4, 8), ("nf4g64", 4, 8), ("fp4g32", 4, 8), (CB2, 4, 8), (CB1, 4, 8), (CB4V2, 4, 8),
    (CB2V2, 4, 8), (CB3, 4, 8), (CB6V2, 4, 8), (CB8V2, 4, 8), (CB5, 4, 8), (CB8V2, 4, 16),
    ("w2g64", 4, 16), ("w4g128", 4, 16), ("ternary", 4, 16), ("nf4g64", 4, 16), (CB2, 4, 16), (CB4V2, 4, 16),
    (CB3, 4, 16),
    ("w1g64", 2, 8), ("w3g128", 2, 8), ("ternary", 2, 8), ("w2g64", 2, 16), ("ternaryg128", 2, 16),
]


_weight = functools.partial(row_scaled_weight, N=N, K=K)
_activations = functools.partial(row_scaled_activations, K=K)


def _check(lin, qw, x, params, bias=None):
    """Lookups are exact integers; the float epilogue adds one term per table group (a few roundings each):
    eps * (table groups + 4) * sum |terms|."""
    ref, magnitude = reference(qw, x, params, magnitude=True)
    if bias is not None:
        ref, magnitude = ref + bias, magnitude + np.abs(bias)
    out = lin.run(x)
    bound = EPS32 * (lin.layout.n_table_groups + 4) * magnitude + EPS32 * np.abs(ref)
    err = np.abs(out - ref)
    assert (err <= bound).all(), f"max err {err.max():.3e}, bound there {bound[err > bound].min():.3e}"


def _target_without(*features):
    return resolve_target(dict(HOST.target, features=sorted(HOST.features - set(features))))


@pytest.mark.parametrize("name,group,table_bits", CASES, ids=[f"{n[:12]}-g{g}-t{t}" for n, g, t in CASES])
def test_lut_kernel_matches_reference(name, group, table_bits):
    params = LutParams(group, table_bits)
    qw = quantize(_weight(hash(name) % 1000), name)
    bias = np.random.default_rng(7).standard_normal(N).astype(np.float32)
    lin = build_linear(qw, bias, target=HOST, kernel="lut", buckets=ONE_BUCKET, lut_params=params)
    assert lin.kernel == "lut" and lin.layout.params == params
    for M in ROWS:
        _check(lin, qw, _activations(M, M), params, bias)


def test_table_quantization_error_is_bounded_and_small():
    """int8 tables round every entry by at most half a table unit (``table_rounding_bound``); measured here,
    the output moves by 0.5-2% of its size, a few times the int8 activation rounding (exact tables)."""
    qw = quantize(_weight(11), "w2g64")
    x = _activations(5, 2)
    exact = x.astype(np.float64) @ qw.dequantize().astype(np.float64).T
    int8_tables = build_linear(qw, target=HOST, kernel="lut", buckets=ONE_BUCKET).run(x)
    exact_tables = reference(qw, x, LutParams(4, 16))
    bound = table_rounding_bound(qw, x, LutParams(4, 8))
    assert (np.abs(int8_tables - exact_tables) <= bound * (1 + 1e-5)).all()
    relative = np.linalg.norm(int8_tables - exact) / np.linalg.norm(exact)
    activation_only = np.linalg.norm(exact_tables - exact) / np.linalg.norm(exact)
    assert activation_only < relative < 0.03


@pytest.mark.skipif(HOST_ISA is None, reason="host has no byte shuffle (AVX2)")
@pytest.mark.parametrize("isa", ["avx512bw", "avx2"])
def test_intrinsic_equals_its_description(isa):
    """The tensorized kernel and the same compute left to LLVM (the description) agree exactly."""
    from lowbit.compiler.tvm_api import tensor, tvm
    from lowbit.schedules.cpu.lut import LutConfig, LutLookup

    target = HOST if isa == "avx512bw" else _target_without("avx512f", "avx512bw")
    if x86_lut.isa_for(target.features) != isa:
        pytest.skip(f"host cannot run the {isa} path")
    rng = np.random.default_rng(3)
    for name in ("w2g64", "w3g128", "nf4g64", CB4V2):  # plane pairs (vpmaddubsw), single planes, codebook codes
        qw = quantize(_weight(5), name)
        layout, arrays = relayout_lut(qw, x86_lut.VECTOR_BYTES[isa])
        inputs = [tensor(rng.standard_normal((3, K)).astype(np.float32))] + [tensor(a) for a in arrays.values()]
        outs = []
        for lookup in ("shuffle", "select"):
            rule, config = LutLookup(), LutConfig(lookup)
            sch = rule.apply(rule.template(layout, 3, False, config), target, config)
            assert (x86_lut.intrin_name(isa, layout.paired) in str(sch.trace)) == (lookup == "shuffle")
            y = tensor(np.zeros((3, N), np.float32))
            tvm.compile(sch.mod, target=target.tvm_target())["main"](*inputs, y)
            outs.append(y.numpy())
        np.testing.assert_array_equal(outs[0], outs[1])


WIDE_PATHS = {"avx512vbmi": (), "avx512bw": ("avx512vbmi",), "avx2": ("avx512vbmi", "avx512f", "avx512bw")}


@pytest.mark.parametrize("isa", list(WIDE_PATHS))
@pytest.mark.parametrize("name", [CB6V2, CB8V2], ids=["64-entries", "256-entries"])
def test_wide_intrinsic_equals_its_description(name, isa):
    """The wide lookups agree exactly with the one-hot description: vpermb (64 entries) and two vpermi2b + a
    blend on index bit 7 (256) with AVX-512 VBMI; 16-entry slices through vpshufb and a select tree without
    it (AVX-512BW, AVX2). The schedule tensorizes the wide intrinsic, and the kernel computes the reference."""
    from lowbit.compiler.tvm_api import tensor, tvm
    from lowbit.schedules.cpu.lut import LutConfig, LutLookup

    target = _target_without(*WIDE_PATHS[isa])
    if x86_lut.wide_isa_for(target.features) != isa:
        pytest.skip(f"host cannot run the {isa} path")
    qw = quantize(_weight(5), name)
    layout, arrays = relayout_lut(qw, x86_lut.VECTOR_BYTES[isa])
    assert layout.wide and layout.lanes == x86_lut.VECTOR_BYTES[isa]
    assert layout.entries == (64 if "6" in name[:3] else 256)
    x = np.random.default_rng(4).standard_normal((3, K)).astype(np.float32)
    inputs = [tensor(x)] + [tensor(a) for a in arrays.values()]
    outs = []
    for lookup in ("shuffle", "select"):
        rule, config = LutLookup(), LutConfig(lookup)
        sch = rule.apply(rule.template(layout, 3, False, config), target, config)
        assert (x86_lut.wide_intrin_name(layout.entries, isa) in str(sch.trace)) == (lookup == "shuffle")
        y = tensor(np.zeros((3, N), np.float32))
        tvm.compile(sch.mod, target=target.tvm_target())["main"](*inputs, y)
        outs.append(y.numpy())
    np.testing.assert_array_equal(outs[0], outs[1])
    lin = build_linear(qw, target=target, kernel="lut", buckets=ONE_BUCKET)
    assert lin.layout.vector_bytes == x86_lut.VECTOR_BYTES[isa] and lin.plans["m1+"].config.lookup == "shuffle"
    _check(lin, qw, x, LutParams())


def test_wide_codebooks_without_byte_shuffles_take_the_portable_gather_kernel():
    """Asked for lut on a host without byte shuffles (no AVX2), a 6-bit codebook gets the portable gather
    kernel (16 rows per tile, one index per byte) and still computes the reference."""
    target = _target_without("avx512vbmi", "avx512f", "avx512bw", "avx2")
    qw = quantize(_weight(7), CB6V2)
    lin = build_linear(qw, target=target, kernel="lut", buckets=ONE_BUCKET)
    assert lin.layout.vector_bytes == x86_lut.PORTABLE_BYTES and lin.plans["m1+"].config.lookup == "gather"
    for M in (1, 3):
        _check(lin, qw, _activations(M, M + 2), LutParams())


@pytest.mark.parametrize("path", ["avx2", "portable"])
def test_each_lookup_path_the_host_supports(path):
    """Force the narrower paths by hiding features: AVX2 (32-byte shuffles) and portable (no shuffle)."""
    hide = {"avx2": ("avx512f", "avx512bw"), "portable": ("avx512f", "avx512bw", "avx2")}[path]
    target = _target_without(*hide)
    expected = {"avx2": "avx2", "portable": None}[path]
    if x86_lut.isa_for(target.features) != expected or path == "avx2" and "avx2" not in HOST.features:
        pytest.skip(f"host cannot run the {path} path")
    qw = quantize(_weight(3), "ternary")
    lin = build_linear(qw, target=target, kernel="lut", buckets=ONE_BUCKET)
    bytes_ = x86_lut.VECTOR_BYTES.get(expected, x86_lut.PORTABLE_BYTES)
    assert lin.layout.vector_bytes == bytes_
    assert lin.plans["m1+"].config.lookup == ("gather" if expected is None else "shuffle")
    for M in ROWS:
        _check(lin, qw, _activations(M, M + 1), LutParams())


def test_all_zero_activation_group_gives_zero_terms():
    qw = quantize(_weight(6), "w2g64")
    x = _activations(2, 3)
    x[:, :64] = 0.0  # a whole table group of zeros: the scale guards must not produce NaN
    lin = build_linear(qw, target=HOST, kernel="lut", buckets=ONE_BUCKET)
    assert np.isfinite(lin.run(x)).all()
    _check(lin, qw, x, LutParams())


def test_formats_without_planes_or_with_odd_groups_are_clear_errors():
    with pytest.raises(KernelError, match="w8 has 8 bit planes; lut supports 1..4 bits"):
        choose_kernel(quantize(_weight(4), "w8"), HOST, "lut")
    with pytest.raises(KernelError, match="group size 6 is not a multiple of the lut table group g=4"):
        build_linear(quantize(_weight(4), "w2g6"), target=HOST, kernel="lut")
    with pytest.raises(ValueError, match="use group 2 or 4"):
        LutParams(group=3)
    wide = quantize(_weight(4), "higgs3g64v2").rotated_codebook()  # 6-bit codes: byte permutes or shuffles
    assert choose_kernel(wide, _target_without("avx512vbmi", "avx512f", "avx512bw", "avx2"), "auto") == "decode"
    if "avx2" in HOST.features:
        assert choose_kernel(wide, _target_without("avx512vbmi"), "auto") == "lut"


def test_whole_model_with_lut_layers_saves_loads_and_runs(tmp_path):
    """kernel="lut" through the pipeline: the artifact's layers say lut, the runtime-only load gives the
    in-process output, and that output is the float model's up to the int8 activation and table rounding."""
    import lowbit
    import lowbit.runtime
    from lowbit.compiler.graph import Activation, QuantizedLinear, Sequential

    rng = np.random.default_rng(9)
    first = quantize(rng.standard_normal((96, 128)), "ternary")
    second = quantize(rng.standard_normal((48, 96)), "nf4g32")
    bias = rng.standard_normal(96).astype(np.float32)
    model = Sequential([QuantizedLinear(first, bias, "fc1"), Activation("relu"), QuantizedLinear(second, None, "fc2")])
    compiled = lowbit.compile(model, target="cpu", kernel="lut")
    assert [layer["kernel"] for layer in compiled.manifest["layers"]] == ["lut", "lut"]
    path = str(tmp_path / "mlp.lowbit")
    compiled.save(path)
    x = rng.standard_normal((4, 128)).astype(np.float32)
    y = compiled(x)
    np.testing.assert_array_equal(lowbit.runtime.load(path)(x), y)
    hidden = np.maximum(x.astype(np.float64) @ first.dequantize().T + bias, 0)
    exact = hidden @ second.dequantize().T
    relative = np.linalg.norm(y - exact) / np.linalg.norm(exact)
    assert relative < 0.03, relative


@pytest.mark.parametrize("name,expected", [("ternary", "lut"), ("w1g64", "lut"), ("nf4g64", "lut"), ("fp4g32", "lut"),
                                           (CB2, "lut"), (CB3, "lut"), (CB4V2, "lut"),
                                           ("w2g64", "lut"), ("w4g128", "a8"), ("w3g128", "a8")])
def test_auto_picks_lut_where_it_measured_fastest(name, expected):
    """The choice of docs/design.md (measured at M=1): lut for ternary, 1-2 bits and codebooks of up to
    4-bit codes; a8 for 3-8 bits. Without a byte shuffle (no AVX2) auto never picks the portable lut."""
    qw = quantize(_weight(8), name)
    if HOST_ISA is None or expected == "a8" and choose_kernel(qw, HOST, "auto") == "decode":
        pytest.skip("host lacks the instructions of the measured choice")
    assert choose_kernel(qw, HOST, "auto") == expected
    assert choose_kernel(qw, _target_without("avx512f", "avx512bw", "avx2"), "auto") != "lut"


LUT_KNOBS = [(2, 2), (4, 8), (1, 4)]  # (tiles per parallel iteration, chunk unroll)


@pytest.mark.parametrize("tiles,unroll", LUT_KNOBS, ids=lambda v: str(v))
@pytest.mark.parametrize("name", ["w2g64", "w3g128", "nf4g64"])  # plane pairs, single planes, codebook codes
def test_every_lut_knob_computes_the_reference(name, tiles, unroll):
    import dataclasses

    from lowbit.compiler.linear import build_prepared, default_plan, prepare_layer
    from lowbit.schedules.cpu.lut import LutConfig

    qw = quantize(row_scaled_weight(11, N=449, K=K), name)  # 4 row tiles of 128 (8 of 64 on AVX2)
    _, layout, arrays = prepare_layer(qw, None, HOST, "lut")
    rule, default = default_plan(layout, ONE_BUCKET[0])
    config = dataclasses.replace(default, tiles=tiles, chunk_unroll=unroll)
    assert config.fits(layout) and isinstance(config, LutConfig)
    lin = build_prepared("lut", layout, arrays, HOST, buckets=ONE_BUCKET, tuning_log=False,
                         overrides={ONE_BUCKET[0].key: (rule, config)})
    assert lin.plans[ONE_BUCKET[0].key].config == config
    for M in (1, 3):
        _check(lin, qw, _activations(M, M + 5), LutParams())


def test_lut_knobs_that_do_not_divide_the_layer_are_declined():
    from lowbit.schedules.cpu.lut import LutConfig, LutLookup

    with pytest.raises(ValueError, match="tiles=3"):
        LutConfig(tiles=3)
    qw = quantize(_weight(2), "w2g64")  # N=141: 2 row tiles of 128 (3 of 64 on AVX2)
    layout, _ = relayout_lut(qw, x86_lut.VECTOR_BYTES.get(HOST_ISA, x86_lut.PORTABLE_BYTES))
    config = LutConfig(lookup="shuffle" if HOST_ISA else "gather", tiles=4)
    assert not config.fits(layout)
    rule = LutLookup()
    assert rule.apply(rule.template(layout, 1, False, config), HOST, config) is None


def test_default_tiles_keep_the_accumulators_in_half_the_registers():
    from lowbit.compiler.formats import parse_format
    from lowbit.compiler.layout import lut_layout
    from lowbit.schedules.cpu.lut import default_tiles

    def tiles(name, vector_bytes, N=14336):
        return default_tiles(lut_layout(parse_format(name), N, 4096, vector_bytes))

    assert [tiles(n, 64) for n in ("w2g64", "ternary", "nf4g64", "w3g128", CB4V2, CB6V2)] == [4, 4, 4, 1, 4, 4]
    assert [tiles(n, 32) for n in ("w2g64", "ternary", "nf4g64", "w3g128")] == [2, 2, 2, 1]  # AVX2
    assert tiles("w2g64", 64, N=1024) == 1  # 8 row tiles: more per iteration leaves too few parallel ones
