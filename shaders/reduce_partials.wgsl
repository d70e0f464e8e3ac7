// reduce_partials: per-centroid sums over fixed row ranges, first of two passes.
//
// WGSL has no portable float atomics, so each workgroup owns one range of rows and
// each invocation one column (a feature, the weight, or the squared error): it walks
// the rows in order and adds into partials[slot][label][column], a (sum, compensation)
// pair for Kahan summation. Nobody else writes that location and the order is fixed,
// so the result repeats bit for bit. CPU twin: backend::cpu::reduce_cpu (f64, fixed
// chunks). WG mirrored in Rust. Labels and distances are read from the assignment
// pass's own output buffer (same layout as assign.wgsl's `Nearest`), so a Lloyd
// iteration keeps them on the device between the two passes.

const WG: u32 = 64u;

struct Params {
    n: u32,          // rows in this chunk
    k: u32,
    d: u32,
    rows_per_group: u32,
    weighted: u32,
    slot0: u32,      // first partial slot this dispatch writes
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> points: array<f32>;
struct Nearest {
    label: u32,
    dist: f32,
    second: f32,
    changed: u32,
}

@group(0) @binding(2) var<storage, read> nearest: array<Nearest>;
@group(0) @binding(3) var<storage, read> weights: array<f32>;
// [slot][k][d + 2][2]: (sum, compensation) of feature sums, then weight, then squared error.
@group(0) @binding(4) var<storage, read_write> partials: array<f32>;

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let d = params.d;
    let w = d + 2u;
    let r0 = wid.x * params.rows_per_group;
    let r1 = min(params.n, r0 + params.rows_per_group);
    let base = (params.slot0 + wid.x) * params.k * w;
    for (var col = lid.x; col < w; col += WG) {
        for (var r = r0; r < r1; r++) {
            var wt = 1.0;
            if (params.weighted != 0u) {
                wt = weights[r];
            }
            var v = wt;
            if (col < d) {
                v = wt * points[r * d + col];
            } else if (col > d) {
                v = wt * nearest[r].dist;
            }
            let at = (base + nearest[r].label * w + col) * 2u;
            let s = partials[at];
            let y = v - partials[at + 1u];
            let t = s + y;
            partials[at + 1u] = (t - s) - y;
            partials[at] = t;
        }
    }
}
