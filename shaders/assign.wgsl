// assign: for every point, the nearest and second-nearest centroid.
//
// A workgroup of 16 × 16 invocations owns a tile of 64 points. It walks the centroids
// in tiles of 64; for each it stages 16 features of the 64 points and of the 64
// centroids in workgroup memory, and every invocation accumulates a 4 × 4 register
// micro-tile of dot products (4 points × 4 centroids). v = ‖c‖² − 2 x·c ranks the
// centroids; each invocation keeps the top two of its 4 points over its centroids,
// and the 16 invocations sharing a point merge theirs at the end (ties: lower index).
// The two finalists are then re-measured by differences (no cancellation) and
// re-ranked, so only true near-ties can differ from the exact CPU path.
// CPU twin: backend::cpu (same rule, exact); WG_X/WG_Y/TILE mirrored in Rust.

const WG_X: u32 = 16u;   // invocations along centroids
const WG_Y: u32 = 16u;   // invocations along points
const TILE: u32 = 64u;   // points per workgroup and centroids per tile
const TD: u32 = 16u;     // features staged per step
const MT: u32 = 4u;      // micro-tile side

struct Params {
    n: u32,        // points in this chunk
    k: u32,
    d: u32,
    _pad: u32,
}

struct Nearest {
    label: u32,
    dist: f32,
    second: f32,
    changed: u32,  // 1 if the label differs from the one in the buffer before
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> points: array<f32>;
@group(0) @binding(2) var<storage, read> centroids: array<f32>;
@group(0) @binding(3) var<storage, read> norms: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<Nearest>;
@group(0) @binding(5) var<storage, read_write> changes: array<atomic<u32>>;

var<workgroup> xs: array<f32, 1024>;     // [TD][TILE] point features
var<workgroup> cs: array<f32, 1024>;     // [TD][TILE] centroid features
var<workgroup> best_v: array<f32, 1024>; // [TILE][WG_X] per-invocation best
var<workgroup> best_i: array<u32, 1024>;
var<workgroup> sec_v: array<f32, 1024>;
var<workgroup> sec_i: array<u32, 1024>;

fn better(v: f32, i: u32, bv: f32, bi: u32) -> bool {
    return v < bv || (v == bv && i < bi);
}

@compute @workgroup_size(16, 16, 1)
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let tx = lid.x;
    let ty = lid.y;
    let flat = ty * WG_X + tx;
    let p0 = wid.x * TILE;
    let n = params.n;
    let k = params.k;
    let d = params.d;

    var b1: array<f32, 4>;
    var i1: array<u32, 4>;
    var b2: array<f32, 4>;
    var i2: array<u32, 4>;
    for (var i = 0u; i < MT; i++) {
        b1[i] = 3.0e38;
        i1[i] = 0xffffffffu;
        b2[i] = 3.0e38;
        i2[i] = 0xffffffffu;
    }

    for (var c0 = 0u; c0 < k; c0 += TILE) {
        var acc: array<array<f32, 4>, 4>;
        for (var f0 = 0u; f0 < d; f0 += TD) {
            // Stage TD features of the 64 points and 64 centroids: 1024 values each,
            // 4 per invocation. Out-of-range entries are zero.
            for (var s = 0u; s < 4u; s++) {
                let e = flat * 4u + s;          // 0..1024
                let f = e / TILE;               // feature within the stage
                let r = e % TILE;               // point / centroid within the tile
                let feat = f0 + f;
                var xv = 0.0;
                if (p0 + r < n && feat < d) {
                    xv = points[(p0 + r) * d + feat];
                }
                xs[f * TILE + r] = xv;
                var cv = 0.0;
                if (c0 + r < k && feat < d) {
                    cv = centroids[(c0 + r) * d + feat];
                }
                cs[f * TILE + r] = cv;
            }
            workgroupBarrier();
            for (var f = 0u; f < TD; f++) {
                var a: array<f32, 4>;
                var b: array<f32, 4>;
                for (var i = 0u; i < MT; i++) {
                    a[i] = xs[f * TILE + ty * MT + i];
                    b[i] = cs[f * TILE + tx * MT + i];
                }
                for (var i = 0u; i < MT; i++) {
                    for (var j = 0u; j < MT; j++) {
                        acc[i][j] = fma(a[i], b[j], acc[i][j]);
                    }
                }
            }
            workgroupBarrier();
        }
        for (var j = 0u; j < MT; j++) {
            let c = c0 + tx * MT + j;
            if (c < k) {
                let nc = norms[c];
                for (var i = 0u; i < MT; i++) {
                    let v = nc - 2.0 * acc[i][j];
                    if (better(v, c, b1[i], i1[i])) {
                        b2[i] = b1[i];
                        i2[i] = i1[i];
                        b1[i] = v;
                        i1[i] = c;
                    } else if (better(v, c, b2[i], i2[i])) {
                        b2[i] = v;
                        i2[i] = c;
                    }
                }
            }
        }
    }

    // Merge the 16 partial top-2 lists of each point.
    for (var i = 0u; i < MT; i++) {
        let r = ty * MT + i;
        best_v[r * WG_X + tx] = b1[i];
        best_i[r * WG_X + tx] = i1[i];
        sec_v[r * WG_X + tx] = b2[i];
        sec_i[r * WG_X + tx] = i2[i];
    }
    workgroupBarrier();
    if (tx < MT) {
        let r = ty * MT + tx;
        let p = p0 + r;
        if (p < n) {
            var v1 = 3.0e38;
            var c1 = 0xffffffffu;
            var v2 = 3.0e38;
            var c2 = 0xffffffffu;
            for (var t = 0u; t < WG_X; t++) {
                for (var q = 0u; q < 2u; q++) {
                    var bv = best_v[r * WG_X + t];
                    var bi = best_i[r * WG_X + t];
                    if (q == 1u) {
                        bv = sec_v[r * WG_X + t];
                        bi = sec_i[r * WG_X + t];
                    }
                    if (bi == 0xffffffffu) {
                        continue;
                    }
                    if (better(bv, bi, v1, c1)) {
                        v2 = v1;
                        c2 = c1;
                        v1 = bv;
                        c1 = bi;
                    } else if (better(bv, bi, v2, c2)) {
                        v2 = bv;
                        c2 = bi;
                    }
                }
            }
            // Re-measure the finalists by differences and re-rank them.
            var d1 = 0.0;
            var d2 = 0.0;
            for (var f = 0u; f < d; f++) {
                let xv = points[p * d + f];
                let e1 = xv - centroids[c1 * d + f];
                d1 = fma(e1, e1, d1);
                if (c2 != 0xffffffffu) {
                    let e2 = xv - centroids[c2 * d + f];
                    d2 = fma(e2, e2, d2);
                }
            }
            var label = c1;
            var dist = d1;
            var second = bitcast<f32>(0x7f800000u); // +inf: no runner-up when k = 1
            if (c2 != 0xffffffffu) {
                second = d2;
                if (d2 < d1 || (d2 == d1 && c2 < c1)) {
                    label = c2;
                    dist = d2;
                    second = d1;
                }
            }
            var changed = 0u;
            if (out[p].label != label) {
                changed = 1u;
                atomicAdd(&changes[0], 1u);
            }
            out[p] = Nearest(label, dist, second, changed);
        }
    }
}
