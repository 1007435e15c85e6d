//! Uniform dequantization y = (x + u) / 256 with u a counter-based hash (splitmix64) of
//! (seed, epoch, image index, pixel index): the same image in the same epoch gets the same noise
//! whatever the batch, order or thread count. u has 16 bits, so x + u is exact in f32 and y always
//! lies in [x/256, (x+1)/256). Bit-for-bit the same as `vaeflow_cli.data.dequantization_noise`.

use rayon::prelude::*;

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;
const M1: u64 = 0xBF58_476D_1CE4_E5B9;
const M2: u64 = 0x94D0_49BB_1331_11EB;

#[inline]
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(GOLDEN);
    z = (z ^ (z >> 30)).wrapping_mul(M1);
    z = (z ^ (z >> 27)).wrapping_mul(M2);
    z ^ (z >> 31)
}

/// The per-(seed, epoch) key of the noise stream.
#[inline]
pub fn stream_key(seed: u64, epoch: u64) -> u64 {
    splitmix64(seed.wrapping_mul(GOLDEN) ^ epoch)
}

/// u for pixel `j` of image `index` (images of `dims` values), a multiple of 2^-16 in [0, 1).
#[inline]
pub fn noise(key: u64, index: u64, dims: u64, j: u64) -> f32 {
    let bits = splitmix64(index.wrapping_mul(dims).wrapping_add(j) ^ key);
    (bits >> 48) as f32 * (1.0 / 65536.0)
}

/// Dequantize a batch: `x` holds `indices.len()` images of `dims` bytes each; `out` receives f32.
pub fn dequantize(x: &[u8], dims: usize, indices: &[u64], seed: u64, epoch: u64, out: &mut [f32]) {
    assert_eq!(x.len(), dims * indices.len(), "x must hold indices.len() images of dims values");
    assert_eq!(out.len(), x.len(), "out must have the shape of x");
    if dims == 0 {
        return;
    }
    let key = stream_key(seed, epoch);
    out.par_chunks_mut(dims)
        .zip(x.par_chunks(dims))
        .zip(indices.par_iter())
        .for_each(|((o, xi), &index)| {
            for (j, (oj, &v)) in o.iter_mut().zip(xi).enumerate() {
                *oj = (v as f32 + noise(key, index, dims as u64, j as u64)) * (1.0 / 256.0);
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix64_matches_the_reference_sequence() {
        // splitmix64 with state 0: first outputs of the reference generator (Vigna).
        assert_eq!(splitmix64(0), 0xE220_A839_7B1D_CDAF);
        assert_eq!(splitmix64(GOLDEN), 0x6E78_9E6A_A1B9_65F4);
    }

    #[test]
    fn values_stay_in_their_bin_and_noise_is_centred() {
        let x: Vec<u8> = (0..=255u8).cycle().take(256 * 40).collect();
        let idx: Vec<u64> = (0..40).collect();
        let mut y = vec![0f32; x.len()];
        dequantize(&x, 256, &idx, 7, 3, &mut y);
        let mut sum = 0f64;
        for (&v, &q) in x.iter().zip(&y) {
            assert!(q >= v as f32 / 256.0 && q < (v as f32 + 1.0) / 256.0, "{v} -> {q}");
            sum += (q * 256.0 - v as f32) as f64;
        }
        let mean = sum / x.len() as f64;
        assert!((mean - 0.5).abs() < 0.01, "mean noise {mean}");
    }

    #[test]
    fn noise_depends_on_seed_epoch_and_index_not_on_batching_or_threads() {
        let dims = 12;
        let x = vec![100u8; dims * 6];
        let idx: Vec<u64> = vec![5, 9, 2, 77, 1000, 3];
        let mut all = vec![0f32; x.len()];
        crate::with_threads(1, || dequantize(&x, dims, &idx, 1, 2, &mut all));
        let mut many = vec![0f32; x.len()];
        crate::with_threads(3, || dequantize(&x, dims, &idx, 1, 2, &mut many));
        assert_eq!(all, many);
        let mut part = vec![0f32; dims * 2];
        dequantize(&x[..dims * 2], dims, &idx[2..4], 1, 2, &mut part);
        assert_eq!(&part[..], &all[dims * 2..dims * 4]);
        let mut other = vec![0f32; x.len()];
        dequantize(&x, dims, &idx, 1, 3, &mut other);
        assert_ne!(all, other);
    }
}
