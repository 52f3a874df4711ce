"""``python -m primitive_lang check``: output forms, --bind, stdin and exit codes."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from pl_testlib import SEED

from primitive_lang.cli import main

ROOT = Path(__file__).resolve().parents[3]
BAD = "GPU_KERNEL k\nGPU_PARAM y float[2]\nGPU_THREAD_CODE:\n  FROB y -> y\n  ADD y nope -> y\nGPU_END\n"
SIZED = ("GPU_KERNEL mm\nGPU_CLASS BATCH\nGPU_PRIORITY 3\nGPU_PARAM a float[64, 128]\nGPU_PARAM b float[128, 32]\n"
         "GPU_PARAM c float[64, 32]\nGPU_THREAD_CODE:\n  PARALLEL_MATMUL a b -> c\nGPU_END\n")


def run(*argv: str, stdin: bytes = b"") -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), stdin=io.BytesIO(stdin), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def files(tmp_path):
    for name, text in {"seed.pxp": SEED, "bad.pxp": BAD, "sized.pxp": SIZED}.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    return tmp_path


def test_text_output_for_valid_files(files):
    code, out, _ = run("check", str(files / "seed.pxp"), str(files / "sized.pxp"))
    assert code == 0
    assert out.splitlines() == [
        f"{files / 'seed.pxp'}: ok: kernel train_model: 1 statements",  # shapes unknown: no figures
        f"{files / 'sized.pxp'}: ok: kernel mm: 1 statements, {2 * 64 * 128 * 32} flops, "
        f"{(64 * 128 + 128 * 32 + 64 * 32) * 4} bytes",
    ]


def test_text_output_lists_every_error_with_its_position(files):
    code, out, _ = run("check", str(files / "bad.pxp"), str(files / "seed.pxp"))
    assert code == 1
    bad = files / "bad.pxp"
    assert out.splitlines() == [
        f"{bad}:4:3: error[unknown-op]: unknown op FROB",
        f"{bad}:5:9: error[undeclared]: nope is not a param and is never written",
        f"{files / 'seed.pxp'}: ok: kernel train_model: 1 statements",
    ]


def test_bind_gives_figures_and_stdin_is_dash():
    code, out, _ = run("check", "--bind", "weights=float32[64,128]", "--bind", "inputs=float[128, 32]",
                       "--bind", "outputs=float[64,32]", "-", stdin=SEED.encode())
    assert code == 0
    assert out == f"-: ok: kernel train_model: 1 statements, {2 * 64 * 128 * 32} flops, 57344 bytes\n"


def test_a_bind_that_does_not_fit_is_an_error_of_the_file():
    code, out, _ = run("check", "--bind", "weights=float[64,128]", "--bind", "inputs=float[127,32]",
                       "--bind", "outputs=float[64,32]", "-", stdin=SEED.encode())
    assert code == 1
    assert out.startswith("-:7:5: error[shape]: PARALLEL_MATMUL inner dimensions differ")


def test_json_output_has_the_documented_fields(files):
    code, out, _ = run("check", "--json", "--bind", "alpha=float", str(files / "sized.pxp"), str(files / "bad.pxp"))
    assert code == 1
    sized, bad = (json.loads(line) for line in out.splitlines())
    assert sized["file"] == str(files / "sized.pxp") and sized["errors"] == []
    (k,) = sized["kernels"]
    assert {"name", "params", "class_hint", "priority", "flops", "bytes"} <= k.keys()
    assert (k["name"], k["class_hint"], k["priority"], k["flops"]) == ("mm", "BATCH", 3, 2 * 64 * 128 * 32)
    assert k["params"][0] == {"name": "a", "dtype": "float32", "shape": [64, 128], "direction": "in",
                              "bound_shape": [64, 128]}
    assert k["params"][2]["direction"] == "out"
    assert bad["kernels"] == []
    assert bad["errors"][0] == {"code": "unknown-op", "line": 4, "column": 3, "message": "unknown op FROB"}


def test_json_without_known_shapes_has_null_figures():
    code, out, _ = run("check", "--json", "-", stdin=SEED.encode())
    k = json.loads(out)["kernels"][0]
    assert code == 0 and k["flops"] is None and k["bytes"] is None
    assert k["params"][0]["shape"] is None


@pytest.mark.parametrize("argv", [
    ["check"],                                     # no file
    ["check", "--bind", "a=float33[2]", "-"],      # not a type
    ["check", "--bind", "a", "-"],                 # not NAME=TYPE
    ["check", "--bind", "a=float", "--bind", "a=int", "-"],  # twice
    ["frobnicate", "x"],                           # no such command
    [],
])
def test_usage_errors_exit_2(argv):
    code, out, err = run(*argv, stdin=SEED.encode())
    assert code == 2 and out == "" and err


def test_an_unreadable_file_exits_2_but_the_others_are_still_checked(files):
    code, out, err = run("check", str(files / "missing.pxp"), str(files / "seed.pxp"))
    assert code == 2
    assert "missing.pxp: error: cannot read" in err
    assert out.endswith("ok: kernel train_model: 1 statements\n")


def test_unused_bind_is_warned_about():
    code, _, err = run("check", "--bind", "zzz=float", "-", stdin=SEED.encode())
    assert code == 0 and "--bind zzz matches no param" in err


def test_the_module_entry_point_runs_as_a_process():
    proc = subprocess.run([sys.executable, "-m", "primitive_lang", "check", "--json", "-"], input=BAD.encode(),
                          capture_output=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 1
    assert json.loads(proc.stdout)["errors"][1]["code"] == "undeclared"
    assert b"Traceback" not in proc.stderr


def test_every_example_passes_check():
    examples = sorted((ROOT / "examples" / "primitives").glob("*.pxp"))
    assert len(examples) >= 6
    code, out, _ = run("check", *map(str, examples))
    assert code == 0, out
    assert out.count(": ok: kernel ") >= len(examples)
