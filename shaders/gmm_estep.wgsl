// gmm_estep: the Gaussian-mixture E-step. One invocation per row: the weighted log
// density of the row under every component, log_const[j] − ½‖(x − μ_j)·P_j‖², then
// the responsibilities by log-sum-exp and the log of the row's total density.
//
// kind 0 (diag, spherical): P_j is a diagonal, prec[j·d + t].
// kind 1 (full, tied): P_j is upper triangular, prec[(j·d + a)·d + b] for a ≤ b, and
// y_b = Σ_{a≤b} (x_a − μ_ja)·P_j[a][b] is recomputed per b (no private array, so any d).
//
// Points arrive shifted by their column means (as for assign); the means are given
// shifted the same way, as an f32 pair (hi + lo) so that x − μ keeps the digits an
// f32 mean alone would lose. Emptied components carry log_const = −1e30.
// CPU twin: backend::cpu::gmm (f64); responsibilities agree within 1e-5.

struct Params {
    rows: u32,     // rows in this dispatch
    offset: u32,   // first row of the dispatch within the points buffer
    k: u32,
    d: u32,
    kind: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> points: array<f32>;
@group(0) @binding(2) var<storage, read> means_hi: array<f32>;
@group(0) @binding(3) var<storage, read> means_lo: array<f32>;
@group(0) @binding(4) var<storage, read> prec: array<f32>;
@group(0) @binding(5) var<storage, read> log_const: array<f32>;
@group(0) @binding(6) var<storage, read_write> resp: array<f32>;
@group(0) @binding(7) var<storage, read_write> log_norm: array<f32>;

// Below this many e-folds under the row's best component a responsibility is 0
// (as the CPU twin).
const NEGLIGIBLE: f32 = -60.0;

fn log_density(x0: u32, j: u32) -> f32 {
    let d = params.d;
    var q: f32 = 0.0;
    if params.kind == 0u {
        for (var t: u32 = 0u; t < d; t = t + 1u) {
            let z = ((points[x0 + t] - means_hi[j * d + t]) - means_lo[j * d + t]) * prec[j * d + t];
            q = fma(z, z, q);
        }
    } else {
        let base = j * d * d;
        for (var b: u32 = 0u; b < d; b = b + 1u) {
            var y: f32 = 0.0;
            for (var a: u32 = 0u; a <= b; a = a + 1u) {
                let diff = (points[x0 + a] - means_hi[j * d + a]) - means_lo[j * d + a];
                y = fma(diff, prec[base + a * d + b], y);
            }
            q = fma(y, y, q);
        }
    }
    return log_const[j] - 0.5 * q;
}

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if i >= params.rows {
        return;
    }
    let k = params.k;
    let x0 = (params.offset + i) * params.d;
    let r0 = i * k;
    var best: f32 = -3.0e38;
    for (var j: u32 = 0u; j < k; j = j + 1u) {
        let v = log_density(x0, j);
        resp[r0 + j] = v;
        best = max(best, v);
    }
    var s: f32 = 0.0;
    for (var j: u32 = 0u; j < k; j = j + 1u) {
        let z = resp[r0 + j] - best;
        if z > NEGLIGIBLE {
            s = s + exp(z);
        }
    }
    let lse = best + log(s);
    for (var j: u32 = 0u; j < k; j = j + 1u) {
        let v = resp[r0 + j];
        var r: f32 = 0.0;
        if v - best > NEGLIGIBLE {
            r = exp(v - lse);
        }
        resp[r0 + j] = r;
    }
    log_norm[i] = lse;
}
