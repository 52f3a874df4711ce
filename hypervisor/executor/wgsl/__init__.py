"""WGSL compute shaders for the wgpu executor, generated per shape class.

Every generator returns WGSL source for one pipeline; the caller (wgpu_runtime.Runtime) caches
the compiled pipeline under the generator's key, so a shader is compiled once per (op, dtypes,
rank after collapsing contiguous dims, operand layout) and reused by every launch after.

Layouts are strided: an operand is (buffer, element offset, strides), so views (PERMUTE,
SLICE, a transposed LINEAR weight) are read in place without copies. Shapes, strides and
scalar operands travel in a small ``pm: array<u32>`` storage buffer, one slot per dispatch.
float16 is stored as ``f16`` (needs the adapter's ``shader-f16``) and computed in f32, as
NumPy computes its float16 ufuncs; float32 and int32 are computed in their own type.
"""

from __future__ import annotations

WG = 256  # invocations per workgroup of the elementwise and reduction shaders

STORAGE = {"float32": "f32", "float16": "f16", "int32": "i32"}
COMPUTE = {"float32": "f32", "float16": "f32", "int32": "i32"}

# Helpers every shader may call: a tanh that stays finite for large |x| (exp(2x) overflows in
# the naive formula), NaN tests that the compiler cannot fold away, and -inf.
PRELUDE = """
fn pxnan(x: f32) -> bool { return (bitcast<u32>(x) & 0x7fffffffu) > 0x7f800000u; }
fn pxtanh(x: f32) -> f32 { let e = exp(-2.0 * abs(x)); return sign(x) * (1.0 - e) / (1.0 + e); }
fn pxneginf() -> f32 { return bitcast<f32>(0xff800000u); }
fn pxmax(a: f32, b: f32) -> f32 { if (pxnan(a)) { return a; } if (pxnan(b)) { return b; } return max(a, b); }
fn pxmin(a: f32, b: f32) -> f32 { if (pxnan(a)) { return a; } if (pxnan(b)) { return b; } return min(a, b); }
"""


def header(dtypes) -> str:
    return ("enable f16;\n" if "float16" in dtypes else "") + PRELUDE


def index_of(i: str, nd: int, shape_at: int, strides_at: list[int], names: list[str]) -> str:
    """WGSL statements turning linear index ``i`` into strided offsets ``names`` (each already
    holding its base offset), the shape at pm[shape_at...] and each operand's strides at
    pm[strides_at[j]...]; coordinates are left in c0..c{nd-1}."""
    if nd == 1:  # the common case (contiguous operands collapse to one dim): no division
        return "\n".join([f"    let c0 = {i};"] + [f"    {name} += c0 * pm[{at}];" for name, at in
                                                      zip(names, strides_at, strict=True)])
    lines = [f"    var rem = {i};"]
    for d in reversed(range(nd)):
        lines.append(f"    let c{d} = rem % pm[{shape_at + d}]; rem = rem / pm[{shape_at + d}];")
        for name, at in zip(names, strides_at, strict=True):
            lines.append(f"    {name} += c{d} * pm[{at + d}];")
    return "\n".join(lines)


def elementwise(lets: tuple[str, ...], result: str, out_dtype: str, operands: tuple, nd: int) -> str:
    """out[...] = result, computed from the leaf operands x0, x1, ... (broadcast to out's
    shape) through ``lets`` (``let t0 = ...;`` lines: a fused chain of elementwise ops).

    ``operands`` holds, per leaf, ("buf", binding, dtype) or ("scalar", dtype); bindings are
    0 for ``out`` itself (a leaf read where it is written, element for element) or 1.. for
    the distinct input buffers. A leaf is loaded in its compute type (f32 for float16).
    Meta: n, shape[nd], out offset, out strides[nd], then per buffer leaf its offset and
    strides[nd], then the scalars (32-bit patterns).
    """
    dts = [out_dtype] + [op[-1] for op in operands]
    binds = {0: STORAGE[out_dtype]}
    for op in operands:
        if op[0] == "buf" and op[1] != 0:
            binds[op[1]] = STORAGE[op[2]]
    src = [header(dts), "@group(0) @binding(0) var<storage, read> pm: array<u32>;",
           f"@group(0) @binding(1) var<storage, read_write> out: array<{binds[0]}>;"]
    for b in sorted(binds):
        if b:
            src.append(f"@group(0) @binding({b + 1}) var<storage, read> in{b}: array<{binds[b]}>;")
    src.append(f"@compute @workgroup_size({WG})")
    src.append("fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {")
    src.append(f"    let i = gid.x + gid.y * nwg.x * {WG}u;")
    src.append("    if (i >= pm[0]) { return; }")
    at = 1 + nd
    names, strides_at = ["po"], [at + 1]
    src.append(f"    var po = pm[{at}];")
    at += 1 + nd
    for j, op in enumerate(operands):
        if op[0] == "buf":
            src.append(f"    var p{j} = pm[{at}];")
            names.append(f"p{j}")
            strides_at.append(at + 1)
            at += 1 + nd
    src.append(index_of("i", nd, 1, strides_at, names))
    k = 0
    for j, op in enumerate(operands):
        c = COMPUTE[op[-1]]
        if op[0] == "buf":
            arr = "out" if op[1] == 0 else f"in{op[1]}"
            src.append(f"    let x{j} = {c}({arr}[p{j}]);")
        else:
            src.append(f"    let x{j} = bitcast<{c}>(pm[{at + k}]);")
            k += 1
    src += [f"    {line}" for line in lets]
    src.append(f"    out[po] = {binds[0]}({result});")
    src.append("}")
    return "\n".join(src)


def _matmul_bindings(a_dtype: str, out_dtype: str, same: bool) -> list[str]:
    """The header and bindings both matmul shaders share: meta, out, A (and B unless
    ``same``: one buffer bound once)."""
    t = STORAGE[a_dtype]
    src = [header([a_dtype, out_dtype]), "@group(0) @binding(0) var<storage, read> pm: array<u32>;",
           f"@group(0) @binding(1) var<storage, read_write> out: array<{STORAGE[out_dtype]}>;",
           f"@group(0) @binding(2) var<storage, read> ina: array<{t}>;"]
    if not same:
        src.append(f"@group(0) @binding(3) var<storage, read> inb: array<{t}>;")
    return src


def matmul(a_dtype: str, out_dtype: str, nbatch: int, same: bool) -> str:
    """C[b] = A[b] @ B[b]: a 64x64 output tile per workgroup of 16x16 invocations, each
    computing a 4x4 block in registers (four vec4 accumulators), the K dimension walked in
    steps of 16 through workgroup memory (A and B tiles as vec4s: one load of each per
    invocation and step). A and B are strided (a transposed weight is read in place); batch
    dims broadcast (stride 0). Meta: M, N, K, a_off, b_off, a_sm, a_sk, b_sk, b_sn, batch
    shape[nb], a strides[nb], b strides[nb], the first batch of this dispatch (a grid has at
    most 65535 in z), then C's offset, batch stride and row stride (C may be a block of a
    larger result: a tile, executor/tiling.py). ``same``: A and B are one buffer (bound once)."""
    c = "i32" if a_dtype == "int32" else "f32"
    v = f"vec4<{c}>"
    bsrc = "ina" if same else "inb"
    src = _matmul_bindings(a_dtype, out_dtype, same)
    src.append(f"""var<workgroup> As: array<{v}, 256>;
var<workgroup> Bs: array<{v}, 256>;
var<private> M: u32; var<private> N: u32; var<private> K: u32;
var<private> pa: u32; var<private> pb: u32;
var<private> a_sm: u32; var<private> a_sk: u32; var<private> b_sk: u32; var<private> b_sn: u32;
fn lda(m: u32, k: u32) -> {c} {{ if (m < M && k < K) {{ return {c}(ina[pa + m * a_sm + k * a_sk]); }} return {c}(0); }}
fn ldb(k: u32, n: u32) -> {c} {{ if (k < K && n < N) {{ return {c}({bsrc}[pb + k * b_sk + n * b_sn]); }} return {c}(0); }}
@compute @workgroup_size(16, 16)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {{
    M = pm[0]; N = pm[1]; K = pm[2];
    pa = pm[3]; pb = pm[4];
    a_sm = pm[5]; a_sk = pm[6]; b_sk = pm[7]; b_sn = pm[8];
    let b = wg.z + pm[{9 + 3 * nbatch}];""")
    src.append(index_of("b", nbatch, 9, [9 + nbatch, 9 + 2 * nbatch], ["pa", "pb"]))
    src.append(f"""    let row0 = wg.y * 64u; let col0 = wg.x * 64u;
    let kk = li / 16u; let q = li % 16u;  // this invocation's loads: k row kk, 4-wide group q
    var acc0 = {v}(0); var acc1 = {v}(0); var acc2 = {v}(0); var acc3 = {v}(0);
    for (var k0 = 0u; k0 < K; k0 += 16u) {{
        let m = row0 + q * 4u; let n = col0 + q * 4u; let k = k0 + kk;
        As[li] = {v}(lda(m, k), lda(m + 1u, k), lda(m + 2u, k), lda(m + 3u, k));
        Bs[li] = {v}(ldb(k, n), ldb(k, n + 1u), ldb(k, n + 2u), ldb(k, n + 3u));
        workgroupBarrier();
        for (var j = 0u; j < 16u; j++) {{
            let a = As[j * 16u + lid.y];
            let bv = Bs[j * 16u + lid.x];
            acc0 += a.x * bv; acc1 += a.y * bv; acc2 += a.z * bv; acc3 += a.w * bv;
        }}
        workgroupBarrier();
    }}
    let po = pm[{10 + 3 * nbatch}u] + b * pm[{11 + 3 * nbatch}u]; let o_sm = pm[{12 + 3 * nbatch}u];
    let m0 = row0 + lid.y * 4u; let n0 = col0 + lid.x * 4u;""")
    ot = STORAGE[out_dtype]
    for r in range(4):
        src.append(f"    if (m0 + {r}u < M) {{")
        for q in range(4):
            comp = "xyzw"[q]
            src.append(f"        if (n0 + {q}u < N) {{ out[po + (m0 + {r}u) * o_sm + n0 + {q}u] = {ot}(acc{r}.{comp}); }}")
        src.append("    }")
    src.append("}")
    return "\n".join(src)


REDUCERS = {
    # name: (accumulator init, combine(a, b) on accumulators, finish(acc, L) -> output value)
    "sum": ("{C}(0)", "{a} + {b}", "{acc}"),
    "mean": ("f32(0)", "{a} + {b}", "{acc} / f32(L)"),
    "max": ("x0", "MAX", "{acc}"),
}


def reduce(kind: str, in_dtype: str, out_dtype: str, nd: int) -> str:
    """One workgroup per output element: its invocations walk the reduced axis (length L,
    stride sr) and combine through workgroup memory. ``kind``: sum, mean, max or argmax
    (the first maximum, a NaN counting as the maximum). Meta: nout, L, sr, in offset,
    out shape[nd], in strides[nd]."""
    is_int = in_dtype == "int32"
    c = "i32" if is_int and kind != "mean" else "f32"
    if kind == "max" or kind == "argmax":
        better = ("(va > vb) || (va == vb && ia < ib)" if is_int else
                  "(pxnan(va) && (!pxnan(vb) || ia < ib)) || (!pxnan(vb) && !pxnan(va) && (va > vb || (va == vb && ia < ib)))")
    src = [header([in_dtype, out_dtype]), "@group(0) @binding(0) var<storage, read> pm: array<u32>;",
           f"@group(0) @binding(1) var<storage, read_write> out: array<{STORAGE[out_dtype]}>;",
           f"@group(0) @binding(2) var<storage, read> inp: array<{STORAGE[in_dtype]}>;",
           f"var<workgroup> sv: array<{c}, {WG}>;", f"var<workgroup> si: array<u32, {WG}>;"]
    if kind in ("max", "argmax"):
        src.append(f"fn better(va: {c}, ia: u32, vb: {c}, ib: u32) -> bool {{ return {better}; }}")
    src.append(f"@compute @workgroup_size({WG})")
    src.append("fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, "
               "@builtin(local_invocation_index) li: u32) {")
    src.append("    let o = wg.x + wg.y * nwg.x;")
    src.append("    if (o >= pm[0]) { return; }")  # uniform per workgroup: barriers stay uniform
    src.append("    let L = pm[1]; let sr = pm[2]; var pi = pm[3];")
    src.append(index_of("o", nd, 4, [4 + nd], ["pi"]))
    if kind in ("max", "argmax"):
        src.append(f"""    var v = {c}(inp[pi]); var ix = 0u;
    for (var j = li; j < L; j += {WG}u) {{
        let x = {c}(inp[pi + j * sr]);
        if (better(x, j, v, ix)) {{ v = x; ix = j; }}
    }}
    sv[li] = v; si[li] = ix;
    workgroupBarrier();
    for (var s = {WG // 2}u; s > 0u; s = s >> 1u) {{
        if (li < s && better(sv[li + s], si[li + s], sv[li], si[li])) {{ sv[li] = sv[li + s]; si[li] = si[li + s]; }}
        workgroupBarrier();
    }}""")
        res = "sv[0]" if kind == "max" else "i32(si[0])"
    else:
        src.append(f"""    var v = {c}(0);
    for (var j = li; j < L; j += {WG}u) {{ v += {c}(inp[pi + j * sr]); }}
    sv[li] = v;
    workgroupBarrier();
    for (var s = {WG // 2}u; s > 0u; s = s >> 1u) {{
        if (li < s) {{ sv[li] = sv[li] + sv[li + s]; }}
        workgroupBarrier();
    }}""")
        res = "sv[0]" if kind == "sum" else ("sv[0] / f32(L)" if not is_int else "trunc(sv[0] / f32(L))")
    src.append(f"    if (li == 0u) {{ out[o] = {STORAGE[out_dtype]}({res}); }}")
    src.append("}")
    return "\n".join(src)


def gather(dtype: str) -> str:
    """out[i * row + r] = table[ids[i] * row + r] (ids already checked to lie in range; clamped
    anyway, so nothing outside the table is ever read). Meta: n, row, rows, table offset."""
    t = STORAGE[dtype]
    return f"""{header([dtype])}
@group(0) @binding(0) var<storage, read> pm: array<u32>;
@group(0) @binding(1) var<storage, read_write> out: array<{t}>;
@group(0) @binding(2) var<storage, read> table: array<{t}>;
@group(0) @binding(3) var<storage, read> ids: array<i32>;
@compute @workgroup_size({WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {{
    let i = gid.x + gid.y * nwg.x * {WG}u;
    if (i >= pm[0]) {{ return; }}
    let row = pm[1];
    let id = u32(clamp(ids[i / row], 0, i32(pm[2]) - 1));
    out[i] = table[pm[3] + id * row + i % row];
}}"""


def rowwise(kind: str, dtype: str) -> str:
    """One workgroup per row of a contiguous [rows, L] array, the row walked by every
    invocation and combined through workgroup memory. ``softmax``: the row's maximum, then
    the sum of exp(x - max), then exp(x - max) / sum (as array_ops.softmax; a NaN or an
    all -inf row gives NaN, as in NumPy). ``rmsnorm``: x * (1 / sqrt(mean(x*x) + eps)) * w,
    w a contiguous [L] vector. Meta: rows, L, in offset, w offset, eps (f32 bits)."""
    t = STORAGE[dtype]
    src = [header([dtype]), "@group(0) @binding(0) var<storage, read> pm: array<u32>;",
           f"@group(0) @binding(1) var<storage, read_write> out: array<{t}>;",
           f"@group(0) @binding(2) var<storage, read> inp: array<{t}>;"]
    if kind == "rmsnorm":
        src.append(f"@group(0) @binding(3) var<storage, read> wv: array<{t}>;")
    src.append(f"var<workgroup> sv: array<f32, {WG}>;")
    src.append(f"@compute @workgroup_size({WG})")
    src.append("fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, "
               "@builtin(local_invocation_index) li: u32) {")
    src.append("    let o = wg.x + wg.y * nwg.x;")
    src.append("    if (o >= pm[0]) { return; }")  # uniform per workgroup
    src.append("    let L = pm[1]; let base = pm[2] + o * L; let ob = o * L;")

    def tree(op: str) -> str:
        return (f"    workgroupBarrier();\n    for (var s = {WG // 2}u; s > 0u; s = s >> 1u) {{\n"
                f"        if (li < s) {{ sv[li] = {op}; }}\n        workgroupBarrier();\n    }}")
    if kind == "softmax":
        src.append(f"""    var m = pxneginf();
    for (var j = li; j < L; j += {WG}u) {{ m = pxmax(m, f32(inp[base + j])); }}
    sv[li] = m;
{tree("pxmax(sv[li], sv[li + s])")}
    let mx = sv[0];
    workgroupBarrier();
    var acc = 0.0;
    for (var j = li; j < L; j += {WG}u) {{ acc += exp(f32(inp[base + j]) - mx); }}
    sv[li] = acc;
{tree("sv[li] + sv[li + s]")}
    let tot = sv[0];
    for (var j = li; j < L; j += {WG}u) {{ out[ob + j] = {t}(exp(f32(inp[base + j]) - mx) / tot); }}""")
    else:
        src.append(f"""    var acc = 0.0;
    for (var j = li; j < L; j += {WG}u) {{ let x = f32(inp[base + j]); acc += x * x; }}
    sv[li] = acc;
{tree("sv[li] + sv[li + s]")}
    let r = 1.0 / sqrt(sv[0] / f32(L) + bitcast<f32>(pm[4]));
    for (var j = li; j < L; j += {WG}u) {{ out[ob + j] = {t}((f32(inp[base + j]) * r) * f32(wv[pm[3] + j])); }}""")
    src.append("}")
    return "\n".join(src)


def matvec(a_dtype: str, out_dtype: str, nbatch: int, same: bool) -> str:
    """C[b] = A[b] @ B[b] for few rows of A (a decode step: M = 1): a workgroup computes 8
    outputs of one row, 32 invocations each walking K (consecutive k on consecutive
    invocations: for LINEAR's transposed weight, consecutive addresses) and summing through
    workgroup memory. The 64x64 tiles of ``matmul`` would leave 63 of 64 rows idle there.
    Grid: (ceil(N / 8), M, batches). Meta as ``matmul`` (C's offset and strides too)."""
    c = "i32" if a_dtype == "int32" else "f32"
    bsrc = "ina" if same else "inb"
    src = _matmul_bindings(a_dtype, out_dtype, same)
    src.append(f"""var<workgroup> sv: array<{c}, 256>;
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {{
    let M = pm[0]; let N = pm[1]; let K = pm[2];
    var pa = pm[3]; var pb = pm[4];
    let a_sm = pm[5]; let a_sk = pm[6]; let b_sk = pm[7]; let b_sn = pm[8];
    let b = wg.z + pm[{9 + 3 * nbatch}];""")
    src.append(index_of("b", nbatch, 9, [9 + nbatch, 9 + 2 * nbatch], ["pa", "pb"]))
    src.append(f"""    let m = wg.y; let r = li / 32u; let lane = li % 32u;
    let n = wg.x * 8u + r;
    var acc = {c}(0);
    if (n < N) {{
        let ra = pa + m * a_sm; let rb = pb + n * b_sn;
        for (var k = lane; k < K; k += 32u) {{ acc += {c}(ina[ra + k * a_sk]) * {c}({bsrc}[rb + k * b_sk]); }}
    }}
    sv[li] = acc;
    workgroupBarrier();
    for (var s = 16u; s > 0u; s = s >> 1u) {{
        if (lane < s) {{ sv[li] = sv[li] + sv[li + s]; }}
        workgroupBarrier();
    }}
    if (lane == 0u && n < N) {{
        out[pm[{10 + 3 * nbatch}u] + b * pm[{11 + 3 * nbatch}u] + m * pm[{12 + 3 * nbatch}u] + n] = {STORAGE[out_dtype]}(sv[li]);
    }}
}}""")
    return "\n".join(src)
