//! JPEG decode (zune-jpeg) + centre crop + antialiased resize (fast_image_resize, Lanczos3: the
//! same convolution resampling as Pillow's LANCZOS) to `size` x `size` RGB, in parallel.

use std::path::Path;

use fast_image_resize::images::Image;
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use rayon::prelude::*;
use zune_core::colorspace::ColorSpace;
use zune_core::options::DecoderOptions;
use zune_jpeg::JpegDecoder;

/// An image that could not be decoded, with the reason; the message names the file.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodeError {
    pub path: String,
    pub reason: String,
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.reason)
    }
}

impl std::error::Error for DecodeError {}

/// Decode JPEG bytes to interleaved RGB: (pixels, width, height). Grayscale becomes RGB.
pub fn decode_rgb(data: &[u8]) -> Result<(Vec<u8>, usize, usize), String> {
    // zune-jpeg fills in a truncated scan silently; a complete JPEG ends with the EOI marker
    // (FF D9), possibly followed by zero padding.
    let end = data.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    if data.len() < 4 || data[..2] != [0xFF, 0xD8] {
        return Err("not a JPEG (no start-of-image marker)".into());
    }
    if !data[..end].ends_with(&[0xFF, 0xD9]) {
        return Err("truncated JPEG (no end-of-image marker)".into());
    }
    let options = DecoderOptions::default().jpeg_set_out_colorspace(ColorSpace::RGB);
    let mut decoder = JpegDecoder::new_with_options(data, options);
    let pixels = decoder.decode().map_err(|e| format!("not a decodable JPEG ({e:?})"))?;
    let (w, h) = decoder.dimensions().ok_or("JPEG without dimensions")?;
    let (w, h) = (w as usize, h as usize);
    if w == 0 || h == 0 {
        return Err("JPEG with an empty image".into());
    }
    match pixels.len() / (w * h) {
        3 if pixels.len() == 3 * w * h => Ok((pixels, w, h)),
        1 if pixels.len() == w * h => Ok((pixels.iter().flat_map(|&v| [v, v, v]).collect(), w, h)),
        _ => Err(format!("decoder returned {} bytes for a {w}x{h} image (truncated?)", pixels.len())),
    }
}

/// Centre-crop an RGB image to `crop` x `crop` (None: no crop; Some(0): the square of the shorter
/// side) and resize it to `size` x `size` into `out` (size*size*3 bytes).
pub fn crop_resize(rgb: Vec<u8>, w: usize, h: usize, crop: Option<usize>, size: usize, out: &mut [u8]) -> Result<(), String> {
    let (left, top, cw, ch) = match crop {
        Some(0) => {
            let c = w.min(h); // the centred square of the shorter side
            ((w - c) / 2, (h - c) / 2, c, c)
        }
        Some(c) if c > w || c > h => return Err(format!("image is {w}x{h}, smaller than the crop {c}")),
        Some(c) => ((w - c) / 2, (h - c) / 2, c, c),
        None => (0, 0, w, h),
    };
    let src = Image::from_vec_u8(w as u32, h as u32, rgb, PixelType::U8x3).map_err(|e| e.to_string())?;
    let mut dst = Image::from_slice_u8(size as u32, size as u32, out, PixelType::U8x3).map_err(|e| e.to_string())?;
    let options = ResizeOptions::new()
        .resize_alg(ResizeAlg::Convolution(FilterType::Lanczos3))
        .crop(left as f64, top as f64, cw as f64, ch as f64);
    // One resizer per thread: it keeps its buffers and its choice of SIMD code between images.
    thread_local! {
        static RESIZER: std::cell::RefCell<Resizer> = std::cell::RefCell::new(Resizer::new());
    }
    RESIZER.with(|r| r.borrow_mut().resize(&src, &mut dst, &options)).map_err(|e| e.to_string())
}

thread_local! {
    /// Set while this thread decodes under catch_unwind: a panic there becomes the file's error,
    /// so the panic hook must not also print it (and a backtrace) to stderr.
    static QUIET_PANICS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn install_quiet_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET_PANICS.with(|q| q.get()) {
                previous(info)
            }
        }));
    });
}

/// Run `f`, turning a panic inside it into an error that carries the panic's message.
fn catch_decoder_panic<T>(f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    install_quiet_panic_hook();
    QUIET_PANICS.with(|q| q.set(true));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    QUIET_PANICS.with(|q| q.set(false));
    result.unwrap_or_else(|payload| {
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        Err(format!("the decoder panicked on this file ({message})"))
    })
}

/// Decode, crop and resize JPEG bytes into `out`. A decoder bug on a hostile file must be an
/// error for that file, never a panic into Python: cargo fuzz found two in zune-jpeg 0.4.21
/// (tests/data/fuzz-*-panic.jpg), and this is what the fuzz target drives.
pub fn decode_bytes(data: &[u8], crop: Option<usize>, size: usize, out: &mut [u8]) -> Result<(), String> {
    catch_decoder_panic(|| {
        let (rgb, w, h) = decode_rgb(data)?;
        crop_resize(rgb, w, h, crop, size, out)
    })
}

/// Read, decode, crop and resize one file into `out`.
pub fn decode_file(path: &Path, crop: Option<usize>, size: usize, out: &mut [u8]) -> Result<(), DecodeError> {
    let err = |reason: String| DecodeError { path: path.display().to_string(), reason };
    let data = std::fs::read(path).map_err(|e| err(format!("cannot read ({e})")))?;
    decode_bytes(&data, crop, size, out).map_err(err)
}

/// Decode many files in parallel into `out` (n * size * size * 3 bytes, image-major). Returns the
/// failures in file order; their slots in `out` are zeros.
pub fn decode_files<P: AsRef<Path> + Sync>(paths: &[P], crop: Option<usize>, size: usize, out: &mut [u8]) -> Vec<(usize, DecodeError)> {
    let per = size * size * 3;
    assert_eq!(out.len(), per * paths.len(), "out must hold paths.len() images");
    let mut failures: Vec<(usize, DecodeError)> = out
        .par_chunks_mut(per)
        .zip(paths.par_iter())
        .enumerate()
        .filter_map(|(i, (slot, path))| match decode_file(path.as_ref(), crop, size, slot) {
            Ok(()) => None,
            Err(e) => {
                slot.fill(0);
                Some((i, e))
            }
        })
        .collect();
    failures.sort_by_key(|(i, _)| *i);
    failures
}
