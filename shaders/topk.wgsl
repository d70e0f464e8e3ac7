// topk: running top-k inner products of query rows against a chunk of base rows.
//
// The dispatch's base rows are split into `slices` spans of `span` rows; workgroup
// (x, y) owns 64 queries (x) for span y, with a list of its own per query, so that a
// few queries still fill a large GPU with workgroups. The host merges a query's
// `slices` lists into one (each keeps its span's best, so their union holds the best
// of all). A workgroup walks its span in tiles of 64, staging 16 features of the
// queries and of the base tile in workgroup memory, each invocation accumulating a 4 × 4 register micro-tile of dot
// products (as assign.wgsl). The 64 × 64 tile of scores goes to workgroup memory;
// then one invocation per query merges the tile into that query's running top-k list
// in device memory (the workgroup owns those lists, so no atomics), keeping the k
// best by score, ties to the lower index. The host re-scores the kept candidates in
// f64. CPU twin: similarity::search_chunk. TILE mirrored in Rust.

const TILE: u32 = 64u;
const TD: u32 = 16u;
const MT: u32 = 4u;

struct Params {
    nq: u32,
    nb: u32,
    d: u32,
    k: u32,        // list length kept per query
    offset: u32,   // index of the chunk's first base row
    span: u32,     // base rows per slice (a multiple of TILE)
    slices: u32,   // lists per query
    _pad: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> queries: array<f32>;
@group(0) @binding(2) var<storage, read> base: array<f32>;
@group(0) @binding(3) var<storage, read_write> top_score: array<f32>;
@group(0) @binding(4) var<storage, read_write> top_index: array<u32>;

var<workgroup> qs: array<f32, 1024>;
var<workgroup> bs: array<f32, 1024>;
var<workgroup> tile: array<f32, 4096>;

@compute @workgroup_size(16, 16, 1)
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let tx = lid.x;
    let ty = lid.y;
    let flat = ty * 16u + tx;
    let q0 = wid.x * TILE;
    let d = params.d;
    let k = params.k;
    let s0 = wid.y * params.span;
    let s1 = min(s0 + params.span, params.nb);
    for (var b0 = s0; b0 < s1; b0 += TILE) {
        var acc: array<array<f32, 4>, 4>;
        for (var f0 = 0u; f0 < d; f0 += TD) {
            for (var s = 0u; s < 4u; s++) {
                let e = flat * 4u + s;
                let f = e / TILE;
                let r = e % TILE;
                let feat = f0 + f;
                var qv = 0.0;
                if (q0 + r < params.nq && feat < d) {
                    qv = queries[(q0 + r) * d + feat];
                }
                qs[f * TILE + r] = qv;
                var bv = 0.0;
                if (b0 + r < s1 && feat < d) {
                    bv = base[(b0 + r) * d + feat];
                }
                bs[f * TILE + r] = bv;
            }
            workgroupBarrier();
            for (var f = 0u; f < TD; f++) {
                var a: array<f32, 4>;
                var b: array<f32, 4>;
                for (var i = 0u; i < MT; i++) {
                    a[i] = qs[f * TILE + ty * MT + i];
                    b[i] = bs[f * TILE + tx * MT + i];
                }
                for (var i = 0u; i < MT; i++) {
                    for (var j = 0u; j < MT; j++) {
                        acc[i][j] = fma(a[i], b[j], acc[i][j]);
                    }
                }
            }
            workgroupBarrier();
        }
        for (var i = 0u; i < MT; i++) {
            for (var j = 0u; j < MT; j++) {
                tile[(ty * MT + i) * TILE + tx * MT + j] = acc[i][j];
            }
        }
        workgroupBarrier();
        if (flat < TILE && q0 + flat < params.nq) {
            let list = ((q0 + flat) * params.slices + wid.y) * k;
            // The current worst kept entry (lowest score; among equals the highest index).
            var worst = 0u;
            for (var t = 1u; t < k; t++) {
                let s = top_score[list + t];
                let w = top_score[list + worst];
                if (s < w || (s == w && top_index[list + t] > top_index[list + worst])) {
                    worst = t;
                }
            }
            for (var j = 0u; j < TILE; j++) {
                if (b0 + j >= s1) {
                    break;
                }
                let s = tile[flat * TILE + j];
                let idx = params.offset + b0 + j;
                let ws = top_score[list + worst];
                if (s > ws || (s == ws && idx < top_index[list + worst])) {
                    top_score[list + worst] = s;
                    top_index[list + worst] = idx;
                    worst = 0u;
                    for (var t = 1u; t < k; t++) {
                        let s2 = top_score[list + t];
                        let w2 = top_score[list + worst];
                        if (s2 < w2 || (s2 == w2 && top_index[list + t] > top_index[list + worst])) {
                            worst = t;
                        }
                    }
                }
            }
        }
        workgroupBarrier();
    }
}
