//! The little dense linear algebra EM needs on d × d matrices (d is the number of
//! features, tens to a few hundred): a Cholesky factor and the inverse of a triangular
//! factor, in f64. Hand-written because it is twenty lines and runs k times per
//! iteration on tiny matrices; a LAPACK binding would add a system dependency for it.

/// Lower-triangular L with L·Lᵀ = `a` (row-major d × d, symmetric), or None when `a`
/// is not (numerically) positive definite.
pub fn cholesky(a: &[f64], d: usize) -> Option<Vec<f64>> {
    let mut l = vec![0.0f64; d * d];
    for i in 0..d {
        for j in 0..=i {
            let mut s = a[i * d + j];
            for p in 0..j {
                s -= l[i * d + p] * l[j * d + p];
            }
            if i == j {
                if s.is_nan() || s <= 0.0 || s.is_infinite() {
                    return None;
                }
                l[i * d + i] = s.sqrt();
            } else {
                l[i * d + j] = s / l[j * d + j];
            }
        }
    }
    Some(l)
}

/// The upper-triangular U = (L⁻¹)ᵀ for lower-triangular L (scikit-learn's precision
/// Cholesky factor: the precision matrix is U·Uᵀ, and ‖(x − μ)·U‖² is the Mahalanobis
/// distance).
pub fn precision_cholesky(l: &[f64], d: usize) -> Vec<f64> {
    // Solve L·M = I column by column (forward substitution); U = Mᵀ.
    let mut m = vec![0.0f64; d * d];
    for c in 0..d {
        for i in c..d {
            let mut s = if i == c { 1.0 } else { 0.0 };
            for p in c..i {
                s -= l[i * d + p] * m[p * d + c];
            }
            m[i * d + c] = s / l[i * d + i];
        }
    }
    let mut u = vec![0.0f64; d * d];
    for i in 0..d {
        for j in 0..d {
            u[i * d + j] = m[j * d + i];
        }
    }
    u
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn factors_reproduce_the_matrix_and_its_inverse() {
        let a = [4.0, 2.0, 0.4, 2.0, 5.0, 1.0, 0.4, 1.0, 3.0];
        let l = cholesky(&a, 3).unwrap();
        for i in 0..3 {
            for j in 0..3 {
                let v: f64 = (0..3).map(|p| l[i * 3 + p] * l[j * 3 + p]).sum();
                assert!((v - a[i * 3 + j]).abs() < 1e-12);
            }
        }
        let u = precision_cholesky(&l, 3);
        // a · (U·Uᵀ) = I
        for i in 0..3 {
            for j in 0..3 {
                let v: f64 =
                    (0..3).map(|p| a[i * 3 + p] * (0..3).map(|q| u[p * 3 + q] * u[j * 3 + q]).sum::<f64>()).sum();
                assert!((v - if i == j { 1.0 } else { 0.0 }).abs() < 1e-12, "{i},{j}: {v}");
            }
        }
        assert!(cholesky(&[1.0, 2.0, 2.0, 1.0], 2).is_none());
    }
}
