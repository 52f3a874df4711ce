"""compile_source: encodings, the size limit, and the cache keyed by sha256."""

from __future__ import annotations

import dataclasses
import hashlib
import pickle

import pytest
from pl_testlib import SEED, problems

from primitive_lang import PrimitiveError, cache_info, clear_cache, compile_source, limits


def test_text_and_its_utf8_bytes_are_one_program_named_by_its_sha256():
    clear_cache()
    a = compile_source(SEED)
    b = compile_source(SEED.encode("utf-8"))
    c = compile_source(bytearray(SEED.encode("utf-8")))
    assert a is b is c
    assert a.source_hash == hashlib.sha256(SEED.encode("utf-8")).hexdigest()
    assert cache_info()["hits"] == 2 and cache_info()["misses"] == 1


def test_a_rejected_source_is_cached_too_and_raises_a_fresh_error_each_time():
    clear_cache()
    src = SEED.replace("GPU_END", "")
    with pytest.raises(PrimitiveError) as first:
        compile_source(src)
    with pytest.raises(PrimitiveError) as second:
        compile_source(src)
    assert first.value is not second.value
    assert first.value.diagnostics == second.value.diagnostics
    assert cache_info()["misses"] == 1


def test_the_cache_is_bounded_and_forgets_the_least_recently_used():
    clear_cache()
    first = compile_source(SEED)
    for i in range(limits.COMPILE_CACHE_SIZE):
        compile_source(SEED + f"# {i}\n")
    assert cache_info()["size"] == limits.COMPILE_CACHE_SIZE
    again = compile_source(SEED)
    assert again is not first  # it was evicted and compiled anew
    assert again.source_hash == first.source_hash


def test_compiled_objects_are_immutable():
    program = compile_source(SEED)
    k = program.kernels[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        program.kernels = ()
    with pytest.raises(dataclasses.FrozenInstanceError):
        k.name = "other"
    with pytest.raises(TypeError):
        k.directions["weights"] = "out"
    with pytest.raises(KeyError):
        program.kernel("absent")


def test_non_utf8_bytes_are_an_encoding_error_at_the_bad_byte():
    assert problems(b"GPU_KERNEL k\nGPU_PARAM \xc3\xa9x \xff float\n") == [("encoding", 2, 14)]
    assert problems("GPU_KERNEL \ud800 k\n") == [("encoding", 1, 12)]


def test_a_source_over_the_size_limit_is_refused_before_any_parsing():
    big = SEED + "#" * limits.MAX_SOURCE_BYTES
    assert problems(big) == [("limit", 1, 1)]
    assert problems(big.encode()) == [("limit", 1, 1)]
    exactly = SEED + "#" * (limits.MAX_SOURCE_BYTES - len(SEED.encode()) - 1) + "\n"
    assert len(exactly.encode()) == limits.MAX_SOURCE_BYTES
    assert problems(exactly) == []


def test_only_text_or_bytes_are_sources():
    with pytest.raises(TypeError):
        compile_source(None)
    with pytest.raises(TypeError):
        compile_source(["GPU_KERNEL"])


def test_errors_pickle_with_their_diagnostics():
    with pytest.raises(PrimitiveError) as info:
        compile_source("nonsense")
    copy = pickle.loads(pickle.dumps(info.value))
    assert copy.diagnostics == info.value.diagnostics and str(copy) == str(info.value)


def test_concurrent_compiles_give_the_same_results_as_sequential_ones():
    from concurrent.futures import ThreadPoolExecutor

    sources = [SEED + f"# {i}\n" + ("GPU_END\n" if i % 3 == 0 else "") for i in range(60)]

    def result(src):
        try:
            return compile_source(src).kernels[0].ast
        except PrimitiveError as exc:
            return exc.diagnostics

    clear_cache()
    expected = [result(s) for s in sources]
    clear_cache()
    with ThreadPoolExecutor(max_workers=6) as pool:
        got = list(pool.map(result, sources))
    assert got == expected


def test_cache_is_bounded_by_the_statements_it_holds(monkeypatch):
    # Large programs fill the cache by size long before its count: the oldest go first,
    # and the total never passes the bound (issue 17: guests share this cache).
    clear_cache()
    monkeypatch.setattr(limits, "COMPILE_CACHE_STATEMENTS", 2000)
    body = "    ADD y 1 -> y\n" * 400
    for i in range(12):
        compile_source(f"GPU_KERNEL k{i}\nGPU_PARAM y float[]\nGPU_THREAD_CODE:\n{body}GPU_END\n")
        assert cache_info()["statements"] <= 2000
    assert cache_info()["size"] == 4  # 401 statements + 1 param each
    compile_source(f"GPU_KERNEL k11\nGPU_PARAM y float[]\nGPU_THREAD_CODE:\n{body}GPU_END\n")
    assert cache_info()["hits"] == 1  # the newest stayed
    clear_cache()
    assert cache_info()["statements"] == 0
