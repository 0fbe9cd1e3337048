"""Option strings at the boundary: format names and targets. Each bad value is a FormatError / TargetError that
names it; seeded fuzz over random names and target dicts finds nothing else escaping."""
import numpy as np
import pytest

import lowbit
from lowbit.compiler.target import resolve_target
from lowbit.errors import FormatError, TargetError

BAD_FORMATS = {
    "arabic-indic-digit": ("w\u0664g128", "non-ASCII"),
    "fullwidth-digit": ("w\uff14g128", "non-ASCII"),
    "long-group": ("w4g1" + "0" * 5000, "5001 digits"),
    "long-bits": ("w" + "4" * 30, "30 digits"),
    "long-higgs": ("higgs3g" + "9" * 40, "40 digits"),
    "equal-levels": ("cb2[1,1,1,1]", "all 4 levels are equal"),
    "equal-points": ("cb1v2[0.5,0.5,0.5,0.5]", "levels are equal"),
    "huge-level-list": ("cb2[" + "1," * 10000 + "1]", "level list of 20001 characters"),
    "nan-level": ("cb1[0,nan]", "finite"),
    "bits-zero": ("w0g32", "out of range"),
}


@pytest.mark.parametrize("name, message", BAD_FORMATS.values(), ids=BAD_FORMATS.keys())
def test_bad_format_names_are_format_errors(name, message):
    with pytest.raises(FormatError, match=message):
        lowbit.parse_format(name)


def test_distinct_levels_with_a_repeat_still_parse():
    assert lowbit.parse_format("cb2[1,2,1,1]").levels == (1.0, 2.0, 1.0, 1.0)


BAD_TARGETS = {
    "cuda-colon": ("cuda:", "names no CUDA architecture"),
    "cuda-unknown": ("cuda:sm_10", "unknown CUDA architecture"),
    "mcpu-unknown": ({"kind": "llvm", "mcpu": "pentium9000"}, "not a CPU LLVM knows"),
    "mcpu-number": ({"kind": "llvm", "mcpu": 7}, "not a CPU LLVM knows"),
    "cores-zero": ({"kind": "llvm", "num-cores": 0}, "num-cores 0"),
    "cores-negative": ({"kind": "llvm", "num-cores": -2}, "num-cores -2"),
    "cores-string": ({"kind": "llvm", "num-cores": "2"}, "num-cores '2'"),
    "features-string": ({"kind": "llvm", "features": "avx2"}, "give a list"),
    "features-numbers": ({"kind": "llvm", "features": [1, 2]}, "give a list"),
    "kind-unknown": ({"kind": "opencl"}, "unknown target"),
}


@pytest.mark.parametrize("target, message", BAD_TARGETS.values(), ids=BAD_TARGETS.keys())
def test_bad_targets_are_target_errors(target, message):
    with pytest.raises(TargetError, match=message):
        resolve_target(target)


def test_a_valid_cross_target_still_resolves():
    info = resolve_target({"kind": "llvm", "mcpu": "znver4", "num-cores": 2, "features": ["avx2", "fma"]})
    assert info.tag == "znver4-avx2" and info.num_cores == 2


def test_random_format_names_parse_or_are_format_errors():
    """Seeded fuzz: 3000 strings from the format alphabet (and some non-ASCII): a format or a FormatError."""
    rng = np.random.default_rng(0)
    alphabet = list("wgsternaryfphicbv0123456789[],.-e ") + ["\u0664", "\u00e9", "nan", "inf"]
    parsed = 0
    for _ in range(3000):
        text = "".join(alphabet[int(i)] for i in rng.integers(len(alphabet), size=int(rng.integers(1, 14))))
        for candidate in (text, "w" + text, "cb2[" + text + "]"):
            try:
                lowbit.parse_format(candidate)
                parsed += 1
            except FormatError:
                pass
    assert parsed > 10  # the fuzz reaches valid names too


def test_random_target_dicts_resolve_or_are_target_errors():
    rng = np.random.default_rng(1)
    values = [None, 0, -1, 1, 2, 1 << 40, "2", "", "skylake", "nope", [], ["avx2"], [3], "avx2", True, {}]
    keys = ["mcpu", "num-cores", "features", "mtriple"]
    resolved = 0
    for _ in range(300):
        target = {"kind": "llvm"}
        for key in keys:
            if rng.random() < 0.5:
                target[key] = values[int(rng.integers(len(values)))]
        try:
            resolve_target(target)
            resolved += 1
        except TargetError:
            pass
    assert 0 < resolved < 300
