//! The thin PyO3 layer: argument checks, GIL release, numpy arrays in and out.

use numpy::{PyArray1, PyReadonlyArray1, PyReadonlyArrayDyn, PyReadwriteArrayDyn, PyUntypedArrayMethods};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::{decode, dequant, with_threads};

/// dequantize(x, indices, seed, epoch, out, threads=0): out[i] = (x[i] + u) / 256 in place, for a
/// C-contiguous uint8 batch x of shape (B, ...) and float32 out of the same shape.
#[pyfunction]
#[pyo3(signature = (x, indices, seed, epoch, out, threads = 0))]
fn dequantize(
    py: Python<'_>,
    x: PyReadonlyArrayDyn<'_, u8>,
    indices: PyReadonlyArray1<'_, u64>,
    seed: u64,
    epoch: u64,
    mut out: PyReadwriteArrayDyn<'_, f32>,
    threads: usize,
) -> PyResult<()> {
    if x.shape() != out.shape() {
        return Err(PyValueError::new_err(format!("out has shape {:?}, x has {:?}", out.shape(), x.shape())));
    }
    let batch = *x.shape().first().ok_or_else(|| PyValueError::new_err("x must have a batch dimension"))?;
    if indices.len() != batch {
        return Err(PyValueError::new_err(format!("{} indices for a batch of {batch}", indices.len())));
    }
    let dims = if batch == 0 { 0 } else { x.len() / batch };
    let xs = x.as_slice().map_err(|_| PyValueError::new_err("x must be C-contiguous"))?;
    let idx = indices.as_slice().map_err(|_| PyValueError::new_err("indices must be contiguous"))?;
    let os = out.as_slice_mut().map_err(|_| PyValueError::new_err("out must be C-contiguous"))?;
    py.detach(|| with_threads(threads, || dequant::dequantize(xs, dims, idx, seed, epoch, os)));
    Ok(())
}

/// The crop argument from Python: a tuple (top, left, height, width) or an int.
#[derive(FromPyObject)]
enum CropArg {
    Box(usize, usize, usize, usize),
    Square(usize),
}

/// (index, message, kind) of a file that could not be decoded.
type Failure = (usize, String, &'static str);

/// decode_images(paths, crop, size, threads=0, max_pixels=DEFAULT_MAX_PIXELS)
///   -> (uint8 array (N*size*size*3,), failures);
/// crop None: no crop, 0: the centred square of the shorter side, c: a centred c x c square,
/// (top, left, height, width): that box, numpy's img[top:top + height, left:left + width].
/// An image whose header claims more than max_pixels pixels is refused before decoding.
/// failures is a list of (index, message, kind) for files that could not be decoded (zeros in the
/// array); kind is "read" (the file could not be read), "size" (over max_pixels), "crop" (the
/// crop does not fit) or "decode" (not a JPEG this decoder reads: another decoder may).
#[pyfunction]
#[pyo3(signature = (paths, crop, size, threads = 0, max_pixels = decode::DEFAULT_MAX_PIXELS))]
fn decode_images<'py>(
    py: Python<'py>,
    paths: Vec<String>,
    crop: Option<CropArg>,
    size: usize,
    threads: usize,
    max_pixels: u64,
) -> PyResult<(Bound<'py, PyArray1<u8>>, Vec<Failure>)> {
    if size == 0 {
        return Err(PyValueError::new_err("size must be positive"));
    }
    if max_pixels == 0 {
        return Err(PyValueError::new_err("max_pixels must be positive"));
    }
    let bytes = paths.len().checked_mul(size).and_then(|n| n.checked_mul(size)).and_then(|n| n.checked_mul(3));
    let bytes = bytes.ok_or_else(|| PyValueError::new_err("paths.len() * size * size * 3 overflows"))?;
    let crop = match crop {
        None => decode::Crop::Full,
        Some(CropArg::Square(n)) => decode::Crop::from(Some(n)),
        Some(CropArg::Box(top, left, height, width)) => decode::Crop::Box { top, left, height, width },
    };
    let (pixels, failures) = py.detach(|| {
        let mut out = vec![0u8; bytes];
        let failures = with_threads(threads, || decode::decode_files_bounded(&paths, crop, size, max_pixels, &mut out));
        (out, failures)
    });
    let failures = failures.into_iter().map(|(i, e)| (i, e.to_string(), e.kind.name())).collect();
    Ok((PyArray1::from_vec(py, pixels), failures))
}

#[pymodule]
#[pyo3(name = "_native")]
fn native_module(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(dequantize, m)?)?;
    m.add_function(wrap_pyfunction!(decode_images, m)?)?;
    Ok(())
}
