"""pxosctl without a daemon: argument parsing, --bind specs, output shapes, exit codes 2
and 3, the top frame, formatting."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hypervisor.ctl import EXIT_UNREACHABLE, EXIT_USAGE, UsageError, main
from hypervisor.ctl_format import message_json, size, table
from hypervisor.ctl_run import parse_bind, resolve_outputs
from hypervisor.ctl_top import frame_data, render
from hypervisor.rpc import pxos_pb2 as pb


def kernel(*params) -> pb.KernelInfo:
    return pb.KernelInfo(kernel_id=1, name="k", params=[
        pb.ParamInfo(name=n, dtype=dt, dims=dims or [], any_shape=dims is None, scalar=dims == [],
                     direction=d) for n, dt, dims, d in params])


MM = kernel(("a", "float32", ["M", "K"], "in"), ("b", "float32", ["K", "N"], "in"),
            ("c", "float32", ["M", "N"], "out"), ("alpha", "float32", [], "in"),
            ("free", "float32", None, "out"))


@pytest.fixture
def params():
    return {p.name: p for p in MM.params}


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_random_and_zeros_binds(params, rng):
    r = parse_bind("a=random:4x3", params, rng)
    assert r.array.shape == (4, 3) and r.array.dtype == np.float32 and not r.zeros
    assert np.std(r.array) > 0
    z = parse_bind("b=zeros:3,2:float64", params, rng)
    assert z.zeros and z.shape == (3, 2) and z.dtype == np.float64 and z.array is None
    i = parse_bind("a=random:5:int32", params, rng)
    assert i.array.dtype == np.int32


def test_scalar_and_npy_binds(params, rng, tmp_path):
    assert parse_bind("alpha=scalar:2.5", params, rng).scalar == 2.5
    assert parse_bind("alpha=scalar:-3", params, rng).scalar == -3
    path = tmp_path / "a.npy"
    np.save(path, np.ones((2, 2), np.float32))
    got = parse_bind(f"a={path}", params, rng)
    assert got.shape == (2, 2) and got.array.flags.c_contiguous
    np.save(path, np.ones((2, 2), np.float64))
    with pytest.raises(UsageError, match="holds float64"):
        parse_bind(f"a={path}", params, rng)


@pytest.mark.parametrize("spec, message", [
    ("a", "NAME=SPEC"), ("zz=random:2", "no param 'zz'"), ("a=random:2y3", "shape"),
    ("a=random:2:complex", "dtype"), ("alpha=random:2", "scalar param"), ("alpha=scalar:x", "not a number"),
    ("a=gauss:3", "expected"), ("a=/nonexistent/x.npy", "cannot load"),
])
def test_bad_binds_are_usage_errors(params, rng, spec, message):
    with pytest.raises(UsageError, match=message):
        parse_bind(spec, params, rng)


def test_outputs_take_their_declared_shape_from_the_inputs(params, rng):
    inputs = {n: parse_bind(s, params, rng) for n, s in
              (("a", "a=random:4x3"), ("b", "b=random:3x2"), ("alpha", "alpha=scalar:1"),
               ("free", "free=zeros:7"))}
    out = resolve_outputs(MM, inputs)
    assert list(out) == ["c"] and out["c"].shape == (4, 2) and out["c"].zeros


def test_outputs_that_cannot_be_sized_need_a_bind(params, rng):
    inputs = {n: parse_bind(s, params, rng) for n, s in
              (("a", "a=random:4x3"), ("b", "b=random:3x2"), ("alpha", "alpha=scalar:1"))}
    with pytest.raises(UsageError, match="no declared shape"):
        resolve_outputs(MM, inputs)  # `free` is float[]
    with pytest.raises(UsageError, match="needs a value"):
        resolve_outputs(MM, {"a": inputs["a"]})
    odd = kernel(("x", "float32", ["N"], "in"), ("y", "float32", ["Q", "3"], "out"))
    with pytest.raises(UsageError, match="cannot tell Q"):
        resolve_outputs(odd, {"x": parse_bind("x=random:5", {p.name: p for p in odd.params}, rng)})


@pytest.mark.parametrize("argv", [
    [], ["vm"], ["vm", "add", "1", "--share", "5"], ["vm", "add", "1", "--memory", "8X", "--share", "5"],
    ["vm", "show", "abc"], ["vm", "show", "0"], ["quota", "set", "1", "--cap", "5", "--no-cap"],
    ["--socket", "a", "--tcp", "b:1", "stats"], ["nonsense"], ["run", "x.pxp"],
])
def test_usage_errors_exit_2(argv, capsys):
    assert main(argv) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "error" in err and "Traceback" not in err


def test_quota_set_with_nothing_to_set_is_a_usage_error(capsys, tmp_path):
    # refused before any request is made: no daemon needed
    assert main(["--socket", str(tmp_path / "none.sock"), "quota", "set", "1"]) == EXIT_USAGE
    assert "at least one" in capsys.readouterr().err


def test_help_exits_0(capsys):
    assert main(["--help"]) == 0
    assert "pxosctl" in capsys.readouterr().out


def test_unreachable_daemon_exits_3(tmp_path, capsys):
    assert main(["--socket", str(tmp_path / "nobody.sock"), "vm", "list"]) == EXIT_UNREACHABLE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot reach pxos-hvd" in err and "Traceback" not in err


def test_environment_names_the_default_socket(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PXOS_SOCKET", str(tmp_path / "env.sock"))
    assert main(["stats"]) == EXIT_UNREACHABLE
    assert "env.sock" in capsys.readouterr().err


def _stats(extra=None) -> pb.StatsResponse:
    vm = pb.VMStats(vm_id=3, name="infer", memory_quota=8 << 30, memory_used=1 << 30, memory_device_bytes=1 << 29,
                    share=30, achieved_share=0.25, queue_depth=2, latency_p50_ms=1.5, latency_p99_ms=9.0,
                    vm_switches_in=4, extra=extra or {})
    return pb.StatsResponse(vms=[vm], device=pb.DeviceStats(backend="numpy", device_name="cpu", pool_bytes=1 << 30),
                            scheduler=pb.SchedulerStats(switch_p50_seconds=2e-6, lookahead_depth=8), time=1e9)


def test_top_frame_shows_dashes_until_overcommit_reports():
    frame = frame_data(_stats())
    v = frame["vms"][0]
    assert v["hit_rate"] is None and v["stall_seconds"] is None
    assert v["share"] == 30 and v["achieved_share"] == 0.25 and v["device_use"] == 0.5
    text = render(frame, ansi=False)
    row = text.splitlines()[-1].split()
    assert row[-2:] == ["-", "-"] and "\x1b" not in text
    for header in ("SHARE", "ACHIEVED", "MEM USED/QUOTA", "DEVICE/POOL", "QUEUE", "P99 ms", "SWITCHES", "HIT"):
        assert header in text
    assert render(frame, ansi=True).startswith("\x1b[H\x1b[2J")


def test_top_frame_with_prefetch_figures():
    v = frame_data(_stats({"prefetch_hits": 3, "prefetch_misses": 1, "stall_seconds": 0.125}))["vms"][0]
    assert v["hit_rate"] == 0.75 and v["stall_seconds"] == 0.125
    row = render(frame_data(_stats({"prefetch_hits": 3, "prefetch_misses": 1, "stall_seconds": 0.125})),
                 ansi=False).splitlines()[-1].split()
    assert row[-2:] == ["75.0%", "0.125"]
    json.dumps(frame_data(_stats()))  # plain data


def test_top_and_stats_json_share_their_names():
    """Issue 11, item 8: `top --json` said id and vm_switch_us where `stats --json` says
    vm_id and switch_p50_seconds. Every key both views have now means the same thing."""
    from hypervisor.ctl_format import message_json

    resp = _stats()
    frame, stats = frame_data(resp), message_json(resp)
    v, sv = frame["vms"][0], stats["vms"][0]
    common = set(v) & set(sv)
    assert {"vm_id", "share", "achieved_share", "latency_p99_ms", "vm_switches_in", "memory_device_bytes"} <= common
    for key in common:
        assert v[key] == sv[key], key
    for key in set(frame["scheduler"]) & set(stats["scheduler"]):
        assert frame["scheduler"][key] == stats["scheduler"][key], key
    assert frame["scheduler"]["switch_p50_seconds"] == 2e-6 and "vm_switch_us" not in frame["scheduler"]
    assert frame["device"]["device_name"] == stats["device"]["device_name"]


def test_formatting_helpers():
    assert size(512) == "512B" and size(8 << 30) == "8.0GiB" and size(1536) == "1.5KiB"
    assert table(["A", "BB"], [["x", "1"], ["yy", "22"]]).splitlines() == ["A   BB", "x    1", "yy  22"]
    j = message_json(pb.VMInfo(vm_id=1, name="007", memory_quota=2**40))
    assert j["name"] == "007" and j["memory_quota"] == 2**40 and j["cap"] is None
