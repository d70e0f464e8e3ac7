// reduce_combine: second pass of the reduction. One invocation per (centroid, column)
// adds the partial slots in slot order (Kahan-compensated), so the result does not
// depend on scheduling. CPU twin: ClusterStats::merge in chunk order. WG mirrored in Rust.

const WG: u32 = 64u;

struct Params {
    k: u32,
    width: u32,    // d + 2
    slots: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
// [slot][k][width][2]: (sum, compensation) pairs from reduce_partials.
@group(0) @binding(1) var<storage, read> partials: array<f32>;
@group(0) @binding(2) var<storage, read_write> totals: array<f32>;

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let e = gid.x;
    let per_slot = params.k * params.width;
    if (e >= per_slot) {
        return;
    }
    var s = 0.0;
    var c = 0.0;
    for (var slot = 0u; slot < params.slots; slot++) {
        let at = (slot * per_slot + e) * 2u;
        let y = (partials[at] - partials[at + 1u]) - c;
        let t = s + y;
        c = (t - s) - y;
        s = t;
    }
    totals[e] = s;
}
