//! Uniform dequantization y = (x + u) / 256 with u a counter-based hash (splitmix64) of
//! (seed, epoch, image index, pixel index): the same image in the same epoch gets the same noise
//! whatever the batch, order or thread count. u has 16 bits, so x + u is exact in f32 and y always
//! lies in [x/256, (x+1)/256).
//!
//! The stream: an image of D values has W = ceil(D/4) 64-bit words; word w of image i is
//! splitmix64((i*W + w) XOR key(seed, epoch)), and pixel j = 4w + l takes its 16-bit lane l
//! (bits 16l..16l+15). One hash serves four pixels, which is what makes this faster than numpy.

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

/// Dequantize one image of `x.len()` values with image index `index` into `out` (portable code;
/// `dequantize` runs the same code compiled for AVX2 or AVX-512 when the CPU has them).
#[inline(always)]
pub fn dequantize_image(x: &[u8], index: u64, key: u64, out: &mut [f32]) {
    let words = x.len().div_ceil(4) as u64;
    let base = index.wrapping_mul(words);
    let mut xs = x.chunks_exact(4);
    let mut os = out.chunks_exact_mut(4);
    let mut w = 0u64;
    for (xc, oc) in (&mut xs).zip(&mut os) {
        let bits = splitmix64(base.wrapping_add(w) ^ key);
        for l in 0..4 {
            let u = ((bits >> (16 * l)) & 0xFFFF) as f32 * (1.0 / 65536.0);
            oc[l] = (xc[l] as f32 + u) * (1.0 / 256.0);
        }
        w += 1;
    }
    let (xr, or) = (xs.remainder(), os.into_remainder());
    if !xr.is_empty() {
        let bits = splitmix64(base.wrapping_add(w) ^ key);
        for (l, (o, &v)) in or.iter_mut().zip(xr).enumerate() {
            let u = ((bits >> (16 * l)) & 0xFFFF) as f32 * (1.0 / 65536.0);
            *o = (v as f32 + u) * (1.0 / 256.0);
        }
    }
}

/// The instruction sets the batch loop is compiled for; chosen once per call at run time, so
/// one wheel runs everywhere and uses 64-bit vector multiplies where the CPU has them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Isa {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl Isa {
    pub fn detect() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512dq") && is_x86_feature_detected!("avx512vl") {
                return Isa::Avx512;
            }
            if is_x86_feature_detected!("avx2") {
                return Isa::Avx2;
            }
        }
        Isa::Portable
    }

    /// Every instruction set this CPU can run (for tests).
    pub fn available() -> Vec<Isa> {
        let mut out = vec![Isa::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2") {
                out.push(Isa::Avx2);
            }
            if Isa::detect() == Isa::Avx512 {
                out.push(Isa::Avx512);
            }
        }
        out
    }

    #[inline]
    pub fn run(self, x: &[u8], index: u64, key: u64, out: &mut [f32]) {
        match self {
            Isa::Portable => dequantize_image(x, index, key, out),
            // SAFETY: detect()/available() only return these when the CPU supports them.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { image_avx2(x, index, key, out) },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => unsafe { image_avx512(x, index, key, out) },
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn image_avx2(x: &[u8], index: u64, key: u64, out: &mut [f32]) {
    dequantize_image(x, index, key, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,avx512f,avx512dq,avx512vl")]
unsafe fn image_avx512(x: &[u8], index: u64, key: u64, out: &mut [f32]) {
    dequantize_image(x, index, key, out)
}

/// Dequantize a batch: `x` holds `indices.len()` images of `dims` bytes each; `out` receives f32.
pub fn dequantize(x: &[u8], dims: usize, indices: &[u64], seed: u64, epoch: u64, out: &mut [f32]) {
    dequantize_with(Isa::detect(), x, dims, indices, seed, epoch, out)
}

/// `dequantize` with a given instruction set.
pub fn dequantize_with(isa: Isa, x: &[u8], dims: usize, indices: &[u64], seed: u64, epoch: u64, out: &mut [f32]) {
    assert_eq!(x.len(), dims * indices.len(), "x must hold indices.len() images of dims values");
    assert_eq!(out.len(), x.len(), "out must have the shape of x");
    if dims == 0 {
        return;
    }
    let key = stream_key(seed, epoch);
    out.par_chunks_mut(dims)
        .zip(x.par_chunks(dims))
        .zip(indices.par_iter())
        .for_each(|((o, xi), &index)| isa.run(xi, index, key, o));
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
    fn every_instruction_set_gives_the_same_bits() {
        let dims = 3 * 7 * 5;
        let x: Vec<u8> = (0..dims * 9).map(|i| (i * 37 % 256) as u8).collect();
        let idx: Vec<u64> = (0..9).map(|i| i * 1_000_003).collect();
        let mut want = vec![0f32; x.len()];
        dequantize_with(Isa::Portable, &x, dims, &idx, 4, 8, &mut want);
        for isa in Isa::available() {
            let mut got = vec![0f32; x.len()];
            dequantize_with(isa, &x, dims, &idx, 4, 8, &mut got);
            assert_eq!(got, want, "{isa:?}");
        }
    }

    #[test]
    fn noise_depends_on_seed_epoch_and_index_not_on_batching_or_threads() {
        let dims = 13; // not a multiple of 4: the last word is partly used
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
