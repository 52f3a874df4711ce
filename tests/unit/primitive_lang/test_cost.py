"""The cost model, against figures worked out by hand from docs/language.md's rules."""

from __future__ import annotations

from pl_testlib import kernel

from primitive_lang import Cost, TensorSpec, compile_source
from primitive_lang.ast import DType

F32 = DType.FLOAT32


def cost_of(body: str, params: str, **shapes: tuple[int, ...]) -> Cost:
    k = compile_source(kernel(body, params)).kernels[0]
    return k.bind({n: TensorSpec(p.type.dtype, shapes[n]) for n, p in ((p.name, p) for p in k.params)}).cost


def test_matmul_is_two_flops_per_multiply_add():
    c = cost_of("  PARALLEL_MATMUL a b -> c", "GPU_PARAM a float[]\nGPU_PARAM b float[]\nGPU_PARAM c float[]",
                a=(64, 128), b=(128, 32), c=(64, 32))
    assert c == Cost(flops=2 * 64 * 128 * 32, bytes_read=(64 * 128 + 128 * 32) * 4, bytes_written=64 * 32 * 4,
                     peak_temp_bytes=0)
    assert c.arithmetic_intensity == c.flops / (c.bytes_read + c.bytes_written)


def test_batched_matmul_counts_the_broadcast_batch():
    c = cost_of("  PARALLEL_MATMUL a b -> c", "GPU_PARAM a float64[]\nGPU_PARAM b float64[]\nGPU_PARAM c float64[]",
                a=(2, 1, 4, 8), b=(3, 8, 5), c=(2, 3, 4, 5))
    assert c.flops == 2 * (2 * 3 * 4 * 5) * 8
    assert (c.bytes_read, c.bytes_written) == ((64 + 120) * 8, 120 * 8)


def test_elementwise_broadcast_literals_and_scalars():
    c = cost_of("  ADD x v -> t\n  MUL t 2 -> t\n  MUL t s -> t\n  GELU t -> t\n  SIGMOID t -> y",
                "GPU_PARAM x float[4, 8]\nGPU_PARAM v float[8]\nGPU_PARAM s float\nGPU_PARAM y float[4, 8]",
                x=(4, 8), v=(8,), s=(), y=(4, 8))
    n = 32
    assert c.flops == n + n + n + 9 * n + 4 * n
    assert c.bytes_read == (n + 8) * 4 + n * 4 + (n + 1) * 4 + n * 4 + n * 4
    assert c.bytes_written == 5 * n * 4
    assert c.peak_temp_bytes == n * 4  # the one local, t


def test_reductions_count_input_elements_and_mean_adds_a_division_per_output():
    c = cost_of("  REDUCE_SUM x axis=1 -> r\n  REDUCE_MEAN x axis=0 -> m\n  REDUCE_MAX x axis=-1 -> y",
                "GPU_PARAM x float[4, 8]\nGPU_PARAM y float[4]", x=(4, 8), y=(4,))
    assert c.flops == 32 + (32 + 8) + 32
    assert (c.bytes_read, c.bytes_written) == (3 * 32 * 4, (4 + 8 + 4) * 4)
    assert c.peak_temp_bytes == (4 + 8) * 4


def test_softmax_transpose_copy_fill():
    c = cost_of("  SOFTMAX x -> s\n  TRANSPOSE s -> t\n  COPY t -> y\n  FILL 0 -> s",
                "GPU_PARAM x float[4, 8]\nGPU_PARAM y float[8, 4]", x=(4, 8), y=(8, 4))
    assert c.flops == 5 * 32
    assert c.bytes_read == 3 * 32 * 4  # FILL of a literal reads nothing
    assert c.bytes_written == 4 * 32 * 4


def test_repeat_multiplies_every_figure_but_not_the_temporaries():
    body = "  COPY x -> t\n  REPEAT 3:\n    ADD t x -> t\n    REPEAT 2:\n      MUL t t -> t\n    END_REPEAT\n  END_REPEAT\n  COPY t -> y"
    c = cost_of(body, "GPU_PARAM x float[10]\nGPU_PARAM y float[10]", x=(10,), y=(10,))
    assert c.flops == 3 * 10 + 6 * 10
    assert c.bytes_read == 40 + 3 * 80 + 6 * 80 + 40
    assert c.bytes_written == 40 + 3 * 40 + 6 * 40 + 40
    assert c.peak_temp_bytes == 40


def test_no_bytes_means_zero_intensity():
    assert Cost(0, 0, 0, 0).arithmetic_intensity == 0.0
    assert Cost(10, 3, 2, 0).bytes_total == 5
