"""The benchmark: its JSON rows and header, peers present or null by format, checks, CLI parsing."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from lowbit import bench
from lowbit.cli import main
from lowbit.commands.bench import default_json_path, parse_shape
from lowbit.errors import InputError, KernelError

TINY_SHAPES = [(1, 256, 512), (3, 256, 512)]
TINY_LLC = 1 << 20  # a few weight copies suffice for the tiny shapes; the real run reads sysfs


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "results" / "tiny.json"
    result = bench.run_bench(shapes=TINY_SHAPES, formats=["w4g128", "ternary"], repeat=2, json_path=str(path),
                             progress=False, llc=TINY_LLC)
    return result, path


def test_json_has_a_row_per_combination_with_exactly_the_documented_keys(tiny_run):
    result, path = tiny_run
    written = json.loads(path.read_text())
    assert written == result
    assert [(r["M"], r["N"], r["K"], r["format"]) for r in written["rows"]] == [
        (1, 256, 512, "w4g128"), (1, 256, 512, "ternary"), (3, 256, 512, "w4g128"), (3, 256, 512, "ternary")]
    for row in written["rows"]:
        assert tuple(row) == bench.ROW_KEYS
        assert row["kernel"] in ("decode", "a8", "lut") and row["lowbit_ms"] > 0 and row["numpy_ms"] > 0  # by auto


def test_ternary_has_no_onnxruntime_peer_and_w4g128_has_both_accuracy_levels(tiny_run):
    result, _ = tiny_run
    for row in result["rows"]:
        if row["format"] == "ternary":
            assert row["ort_acc4_ms"] is None and row["ort_acc0_ms"] is None and row["speedup_vs_ort"] is None
        else:
            assert row["ort_acc4_ms"] > 0 and row["ort_acc0_ms"] > 0
            best = min(row["ort_acc4_ms"], row["ort_acc0_ms"])
            assert row["speedup_vs_ort"] == pytest.approx(best / row["lowbit_ms"], rel=1e-2)
    assert any("ternary" in note and "uniform integer formats only" in note for note in result["header"]["notes"])


def test_derived_columns_follow_from_the_times(tiny_run):
    result, _ = tiny_run
    dram = result["header"]["dram_gbps"]
    for row in result["rows"]:
        M, N, K = row["M"], row["N"], row["K"]
        gbps = (row["weight_bytes"] + 4 * M * K + 4 * M * N) / (row["lowbit_ms"] * 1e-3) / 1e9
        assert row["gbps"] == pytest.approx(gbps, rel=1e-2)
        assert row["bw_fraction"] == pytest.approx(row["gbps"] / dram, rel=1e-2, abs=1e-3)
        assert row["speedup_vs_numpy"] == pytest.approx(row["numpy_ms"] / row["lowbit_ms"], rel=1e-2)
        if row["ggml_ms"] is not None:
            assert row["ggml_type"] and row["speedup_vs_ggml"] == pytest.approx(row["ggml_ms"] / row["lowbit_ms"],
                                                                                  rel=1e-2)


def test_header_names_machine_versions_cache_and_bandwidth(tiny_run):
    header = tiny_run[0]["header"]
    assert header["cpu"] and header["threads"] >= 1 and header["features"] == sorted(header["features"])
    assert set(header["versions"]) == {"lowbit", "tvm", "numpy", "onnxruntime", "torch", "ggml_python"}
    assert header["llc_bytes"] == TINY_LLC and header["dram_gbps"] > 0 and header["repeat"] == 2


def test_tables_have_one_line_per_row(tiny_run):
    result, _ = tiny_run
    markdown = bench.format_table(result, markdown=True).splitlines()
    assert markdown[0].startswith("| M,N,K | format | kernel | lowbit_ms") and markdown[1].startswith("| --- |")
    assert len(markdown) == 2 + len(result["rows"])
    text = bench.format_table(result).splitlines()
    assert len(text) == 1 + len(result["rows"]) and "x_ort" in text[0] and "%bw" in text[0]
    assert "ternary" in text[2] and " - " in text[2]  # no onnxruntime number for ternary


def test_a_wrong_kernel_result_gets_no_number(monkeypatch):
    """Regression guard: a kernel whose output is off must stop the benchmark, not be timed."""
    real_runner = bench.lowbit_runner

    def off_by_a_little(linear, x, copies):
        run = real_runner(linear, x, copies)

        def wrong():
            y = run()
            from lowbit.compiler.tvm_api import tensor
            values = y.numpy()
            values[0, 7] += 1e-2 * (np.abs(values).max() + 1)
            return tensor(values)

        return wrong

    monkeypatch.setattr(bench, "lowbit_runner", off_by_a_little)
    monkeypatch.setattr(bench, "dram_gbps", lambda threads, size: 10.0)
    with pytest.raises(KernelError, match=r"1x64x256 w4g128 kernel=auto: wrong result.*at \[0, 7\]"):
        bench.run_bench(shapes=[(1, 64, 256)], formats=["w4g128"], repeat=1, progress=False, llc=TINY_LLC)


def test_lut_rows_are_checked_against_their_table_reference_and_declined_formats_are_notes(monkeypatch):
    monkeypatch.setattr(bench, "dram_gbps", lambda threads, size: 10.0)
    result = bench.run_bench(shapes=[(1, 256, 512)], formats=["w2g64", "w8"], kernels=["lut"], repeat=1,
                             progress=False, llc=TINY_LLC)
    assert [(r["format"], r["kernel"]) for r in result["rows"]] == [("w2g64", "lut")]
    assert any("w8" in note and "lut supports 1..4 bits" in note for note in result["header"]["notes"])


def test_a_kernel_that_declines_every_combination_is_an_error(monkeypatch):
    monkeypatch.setattr(bench, "dram_gbps", lambda threads, size: 10.0)
    with pytest.raises(KernelError, match="no combination could be benchmarked.*lut supports 1..4 bits"):
        bench.run_bench(shapes=[(1, 64, 256)], formats=["w8"], kernels=["lut"], progress=False, llc=TINY_LLC)


@pytest.mark.parametrize("text", ["1,2", "1,2,3,4", "a,b,c", "0,64,64", "1,-4,64", "", "1x64x64"])
def test_bad_shape_strings_are_input_errors(text):
    with pytest.raises(InputError, match="three positive integers M,N,K"):
        parse_shape(text)


def test_good_shape_strings_parse():
    assert parse_shape("1,4096,14336") == (1, 4096, 14336) and parse_shape(" 16, 64 ,32") == (16, 64, 32)


def test_cli_reports_a_bad_shape_without_running(capsys):
    assert main(["bench", "--shape", "1,4096"]) == 1
    assert "--shape '1,4096' is not three positive integers" in capsys.readouterr().err


def test_bench_help_exits_zero():
    done = subprocess.run([sys.executable, "-m", "lowbit", "bench", "--help"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0 and "--shape" in done.stdout and "--markdown" in done.stdout


def test_default_json_path_names_target_and_date():
    import datetime

    path = default_json_path("emeraldrapids-avx512", datetime.date(2026, 1, 2))
    assert path == os.path.join("benchmarks", "results", "bench-emeraldrapids-avx512-20260102.json")


def test_copies_span_twice_the_cache_within_the_memory_cap():
    llc = 260 << 20
    assert bench.copies_for(64 << 20, llc) == 10  # ceil(520 / 64) + 1
    assert bench.copies_for(224 << 20, llc) == 4
    assert bench.copies_for(4 << 30, llc) == 2  # the memory cap, never fewer than 2


def test_writing_json_is_atomic(tmp_path):
    path = tmp_path / "result.json"
    bench.write_json(str(path), {"rows": [1]})
    with pytest.raises(TypeError):
        bench.write_json(str(path), {"rows": [object()]})
    assert json.loads(path.read_text()) == {"rows": [1]}
    assert os.listdir(tmp_path) == ["result.json"]  # no temp file left behind
