"""WGSL compute shaders for the wgpu executor, generated per shape class.

Every generator returns WGSL source for one pipeline; the caller (wgpu_array.Runtime) caches
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
    lines = [f"    var rem = {i};"]
    for d in reversed(range(nd)):
        lines.append(f"    let c{d} = rem % pm[{shape_at + d}]; rem = rem / pm[{shape_at + d}];")
        for name, at in zip(names, strides_at, strict=True):
            lines.append(f"    {name} += c{d} * pm[{at + d}];")
    return "\n".join(lines)


def elementwise(expr: str, out_dtype: str, operands: tuple, nd: int) -> str:
    """out[...] = expr over operands, all broadcast to out's shape.

    ``operands`` holds, per operand, ("buf", binding, dtype) or ("scalar", dtype); bindings
    are 0 for ``out`` itself (an operand read where it is written, element for element) or
    1.. for the distinct input buffers. In ``expr`` the operands are {0}, {1}, ..., the
    compute type of the output is {C}. Meta: n, shape[nd], out offset, out strides[nd], then
    per buffer operand its offset and strides[nd], then the scalars (32-bit patterns).
    """
    dts = [out_dtype] + [op[-1] for op in operands]
    out_c = COMPUTE[out_dtype]
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
    loads, k = [], 0
    for j, op in enumerate(operands):
        if op[0] == "buf":
            src.append(f"    var p{j} = pm[{at}];")
            names.append(f"p{j}")
            strides_at.append(at + 1)
            at += 1 + nd
    src.append(index_of("i", nd, 1, strides_at, names))
    for j, op in enumerate(operands):
        c = COMPUTE[op[-1]]
        if op[0] == "buf":
            arr = "out" if op[1] == 0 else f"in{op[1]}"
            loads.append(f"    let x{j} = {c}({arr}[p{j}]);")
        else:
            loads.append(f"    let x{j} = bitcast<{'f32' if c == 'f32' else 'i32'}>(pm[{at + k}]);")
            k += 1
    src += loads
    body = expr.format(*[f"x{j}" for j in range(len(operands))], C=out_c)
    src.append(f"    out[po] = {binds[0]}({body});")
    src.append("}")
    return "\n".join(src)


def matmul(a_dtype: str, out_dtype: str, nbatch: int, same: bool) -> str:
    """C[b] = A[b] @ B[b]: a 64x64 output tile per workgroup of 16x16 invocations, each
    computing 4x4, the K dimension walked in steps of 16 through workgroup memory. A and B are
    strided (a transposed weight is read in place); batch dims broadcast (stride 0).
    Meta: M, N, K, a_off, b_off, a_sm, a_sk, b_sk, b_sn, batch shape[nb], a strides[nb],
    b strides[nb]. ``same``: A and B are one buffer (bound once)."""
    c = "i32" if a_dtype == "int32" else "f32"
    t = STORAGE[a_dtype]
    bsrc = "ina" if same else "inb"
    src = [header([a_dtype, out_dtype]), "@group(0) @binding(0) var<storage, read> pm: array<u32>;",
           f"@group(0) @binding(1) var<storage, read_write> out: array<{STORAGE[out_dtype]}>;",
           f"@group(0) @binding(2) var<storage, read> ina: array<{t}>;"]
    if not same:
        src.append(f"@group(0) @binding(3) var<storage, read> inb: array<{t}>;")
    src.append(f"""var<workgroup> As: array<{c}, 1024>;
var<workgroup> Bs: array<{c}, 1024>;
@compute @workgroup_size(16, 16)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {{
    let M = pm[0]; let N = pm[1]; let K = pm[2];
    var pa = pm[3]; var pb = pm[4];
    let a_sm = pm[5]; let a_sk = pm[6]; let b_sk = pm[7]; let b_sn = pm[8];
    let b = wg.z;""")
    src.append(index_of("b", nbatch, 9, [9 + nbatch, 9 + 2 * nbatch], ["pa", "pb"]))
    src.append(f"""    let row0 = wg.y * 64u; let col0 = wg.x * 64u;
    var acc: array<{c}, 16>;
    for (var k0 = 0u; k0 < K; k0 += 16u) {{
        for (var e = 0u; e < 4u; e++) {{
            let idx = li + e * 256u;
            let kk = idx / 64u; let mm = idx % 64u;
            let gk = k0 + kk;
            var av = {c}(0); var bv = {c}(0);
            if (row0 + mm < M && gk < K) {{ av = {c}(ina[pa + (row0 + mm) * a_sm + gk * a_sk]); }}
            if (col0 + mm < N && gk < K) {{ bv = {c}({bsrc}[pb + gk * b_sk + (col0 + mm) * b_sn]); }}
            As[idx] = av; Bs[idx] = bv;
        }}
        workgroupBarrier();
        for (var kk = 0u; kk < 16u; kk++) {{
            for (var r = 0u; r < 4u; r++) {{
                let av = As[kk * 64u + lid.y * 4u + r];
                for (var s = 0u; s < 4u; s++) {{
                    acc[r * 4u + s] += av * Bs[kk * 64u + lid.x * 4u + s];
                }}
            }}
        }}
        workgroupBarrier();
    }}
    let po = b * M * N;
    for (var r = 0u; r < 4u; r++) {{
        let m = row0 + lid.y * 4u + r;
        for (var s = 0u; s < 4u; s++) {{
            let n = col0 + lid.x * 4u + s;
            if (m < M && n < N) {{ out[po + m * N + n] = {STORAGE[out_dtype]}(acc[r * 4u + s]); }}
        }}
    }}
}}""")
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
