//! JPEG decode (zune-jpeg) + crop (a centred square or an offset box) + antialiased resize
//! (fast_image_resize, Lanczos3: the same convolution resampling as Pillow's LANCZOS) to
//! `size` x `size` RGB, in parallel.
//!
//! Sizes are bounded before anything is decoded: the header's width x height must not exceed
//! `max_pixels` (default `DEFAULT_MAX_PIXELS`), so a file that claims 60000 x 60000 pixels costs
//! a header parse, not gigabytes; and only regular files of a bounded length are read.

use std::io::Read;
use std::path::Path;

use fast_image_resize::images::Image;
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use rayon::prelude::*;
use zune_core::colorspace::ColorSpace;
use zune_core::options::DecoderOptions;
use zune_jpeg::JpegDecoder;

/// The default bound on width x height: 40 megapixels, ~1000 times a CelebA image (178 x 218),
/// at most ~120 MB of decoded RGB per image in flight.
pub const DEFAULT_MAX_PIXELS: u64 = 40_000_000;

/// Why a file failed, so that the caller knows whether another decoder could do better.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The file could not be read (missing, a directory, not a regular file, permission, too long).
    Read,
    /// The header claims more pixels than allowed; nothing was decoded.
    TooLarge,
    /// The image was decoded but the crop does not fit it.
    Crop,
    /// Not a JPEG this decoder reads (another decoder may).
    Decode,
}

impl FailureKind {
    /// The name the Python layer sees.
    pub fn name(self) -> &'static str {
        match self {
            FailureKind::Read => "read",
            FailureKind::TooLarge => "size",
            FailureKind::Crop => "crop",
            FailureKind::Decode => "decode",
        }
    }
}

/// An image that could not be decoded, with the reason; the message names the file.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodeError {
    pub path: String,
    pub reason: String,
    pub kind: FailureKind,
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.reason)
    }
}

impl std::error::Error for DecodeError {}

/// A reason with its kind (the error type of the byte-level functions below).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub kind: FailureKind,
    pub reason: String,
}

impl Failure {
    fn new(kind: FailureKind, reason: impl Into<String>) -> Failure {
        Failure { kind, reason: reason.into() }
    }
}

impl From<Failure> for String {
    fn from(f: Failure) -> String {
        f.reason
    }
}

/// The message for an image of `w` x `h` over the bound, or None when it is within it.
pub fn too_large(w: usize, h: usize, max_pixels: u64) -> Option<String> {
    let pixels = (w as u64).saturating_mul(h as u64);
    (pixels > max_pixels).then(|| {
        format!("the header claims {w}x{h} = {pixels} pixels, more than the limit of {max_pixels} (nothing was decoded)")
    })
}

/// Decode JPEG bytes to interleaved RGB: (pixels, width, height). Grayscale becomes RGB. Images
/// over `DEFAULT_MAX_PIXELS` are refused from their header.
pub fn decode_rgb(data: &[u8]) -> Result<(Vec<u8>, usize, usize), String> {
    decode_rgb_bounded(data, DEFAULT_MAX_PIXELS).map_err(String::from)
}

/// `decode_rgb` with a bound on width x height, checked on the header before decoding.
pub fn decode_rgb_bounded(data: &[u8], max_pixels: u64) -> Result<(Vec<u8>, usize, usize), Failure> {
    let fail = |reason: String| Failure::new(FailureKind::Decode, reason);
    if data.len() < 4 || data[..2] != [0xFF, 0xD8] {
        return Err(fail("not a JPEG (no start-of-image marker)".into()));
    }
    // JPEG dimensions are 16-bit: let the bound below, not zune-jpeg's default 16384 per side,
    // decide what is too large.
    let options = DecoderOptions::default()
        .jpeg_set_out_colorspace(ColorSpace::RGB)
        .set_max_width(usize::from(u16::MAX))
        .set_max_height(usize::from(u16::MAX));
    // zune-jpeg fills in a truncated scan silently; a complete JPEG ends with the EOI marker
    // (FF D9), possibly followed by zero padding.
    let end = data.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    let truncated = || fail("truncated JPEG (no end-of-image marker)".into());
    let complete = data[..end].ends_with(&[0xFF, 0xD9]);
    let mut decoder = JpegDecoder::new_with_options(data, options);
    // The header first: the size is checked before a pixel is allocated.
    if let Err(e) = decoder.decode_headers() {
        return Err(if complete { fail(format!("not a decodable JPEG ({e:?})")) } else { truncated() });
    }
    let (w, h) = decoder.dimensions().ok_or_else(|| fail("JPEG without dimensions".into()))?;
    if let Some(message) = too_large(w, h, max_pixels) {
        return Err(Failure::new(FailureKind::TooLarge, message));
    }
    if !complete {
        return Err(truncated());
    }
    let pixels = decoder.decode().map_err(|e| fail(format!("not a decodable JPEG ({e:?})")))?;
    let (w, h) = decoder.dimensions().ok_or_else(|| fail("JPEG without dimensions".into()))?;
    if w == 0 || h == 0 {
        return Err(fail("JPEG with an empty image".into()));
    }
    match pixels.len() / (w * h) {
        3 if pixels.len() == 3 * w * h => Ok((pixels, w, h)),
        1 if pixels.len() == w * h => Ok((pixels.iter().flat_map(|&v| [v, v, v]).collect(), w, h)),
        _ => Err(fail(format!("decoder returned {} bytes for a {w}x{h} image (truncated?)", pixels.len()))),
    }
}

/// The part of a decoded image that is kept and resized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Crop {
    /// The whole image.
    Full,
    /// The centred square of the shorter side.
    Shorter,
    /// A centred `n` x `n` square: (w - n) / 2 columns from the left, (h - n) / 2 rows from the top.
    Centred(usize),
    /// Rows `top..top + height` and columns `left..left + width`, i.e. numpy's
    /// `img[top:top + height, left:left + width]`.
    Box { top: usize, left: usize, height: usize, width: usize },
}

/// The centred forms, as before boxes existed: None: no crop, Some(0): the square of the shorter
/// side, Some(n): a centred n x n square.
impl From<Option<usize>> for Crop {
    fn from(crop: Option<usize>) -> Crop {
        match crop {
            None => Crop::Full,
            Some(0) => Crop::Shorter,
            Some(n) => Crop::Centred(n),
        }
    }
}

impl Crop {
    /// (left, top, width, height) of the kept region of a `w` x `h` image, or why it does not fit.
    pub fn region(self, w: usize, h: usize) -> Result<(usize, usize, usize, usize), String> {
        match self {
            Crop::Full => Ok((0, 0, w, h)),
            Crop::Shorter => {
                let c = w.min(h);
                Ok(((w - c) / 2, (h - c) / 2, c, c))
            }
            Crop::Centred(0) => Err("empty crop (0 x 0)".into()),
            Crop::Centred(c) if c > w || c > h => Err(format!("image is {w}x{h}, smaller than the crop {c}")),
            Crop::Centred(c) => Ok(((w - c) / 2, (h - c) / 2, c, c)),
            Crop::Box { height: 0, .. } | Crop::Box { width: 0, .. } => Err("empty crop box (zero height or width)".into()),
            Crop::Box { top, left, height, width } => {
                let fits = top.checked_add(height).is_some_and(|b| b <= h) && left.checked_add(width).is_some_and(|r| r <= w);
                if !fits {
                    return Err(format!(
                        "image is {w}x{h}, the crop box (rows {top}:{}, columns {left}:{}) does not fit in it",
                        top.saturating_add(height),
                        left.saturating_add(width)
                    ));
                }
                Ok((left, top, width, height))
            }
        }
    }
}

/// Crop an RGB image (see `Crop`; `Option<usize>` gives the centred forms) and resize the kept
/// region to `size` x `size` into `out` (size*size*3 bytes).
pub fn crop_resize(rgb: Vec<u8>, w: usize, h: usize, crop: impl Into<Crop>, size: usize, out: &mut [u8]) -> Result<(), String> {
    let (left, top, cw, ch) = crop.into().region(w, h)?;
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
fn catch_decoder_panic<T>(f: impl FnOnce() -> Result<T, Failure>) -> Result<T, Failure> {
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
        Err(Failure::new(FailureKind::Decode, format!("the decoder panicked on this file ({message})")))
    })
}

/// Decode, crop and resize JPEG bytes into `out`. A decoder bug on a hostile file must be an
/// error for that file, never a panic into Python: cargo fuzz found two in zune-jpeg 0.4.21
/// (tests/data/fuzz-*-panic.jpg), and this is what the fuzz target drives.
pub fn decode_bytes(data: &[u8], crop: impl Into<Crop>, size: usize, out: &mut [u8]) -> Result<(), String> {
    decode_bytes_bounded(data, crop, size, DEFAULT_MAX_PIXELS, out).map_err(String::from)
}

/// `decode_bytes` with a bound on the header's width x height (see `decode_rgb_bounded`).
pub fn decode_bytes_bounded(data: &[u8], crop: impl Into<Crop>, size: usize, max_pixels: u64, out: &mut [u8]) -> Result<(), Failure> {
    let crop = crop.into();
    catch_decoder_panic(|| {
        let (rgb, w, h) = decode_rgb_bounded(data, max_pixels)?;
        crop_resize(rgb, w, h, crop, size, out).map_err(|reason| {
            let kind = if crop.region(w, h).is_err() { FailureKind::Crop } else { FailureKind::Decode };
            Failure::new(kind, reason)
        })
    })
}

/// The most bytes read from one image file: 16 per allowed pixel (far more than any JPEG or PNG
/// of that many pixels needs, metadata included), at least 64 MiB.
pub fn max_file_bytes(max_pixels: u64) -> u64 {
    max_pixels.saturating_mul(16).max(64 << 20)
}

/// The bytes of a regular file of at most `limit` bytes; a directory, a device or a FIFO (which
/// could block or never end) is refused before it is opened.
pub fn read_bounded(path: &Path, limit: u64) -> Result<Vec<u8>, Failure> {
    let fail = |reason: String| Failure::new(FailureKind::Read, reason);
    let meta = std::fs::metadata(path).map_err(|e| fail(format!("cannot read ({e})")))?;
    if meta.is_dir() {
        return Err(fail("is a directory, not an image file".into()));
    }
    if !meta.is_file() {
        return Err(fail("is not a regular file (a device, FIFO or socket)".into()));
    }
    if meta.len() > limit {
        return Err(fail(format!("the file is {} bytes, more than the {limit} an image within the pixel limit needs", meta.len())));
    }
    let file = std::fs::File::open(path).map_err(|e| fail(format!("cannot read ({e})")))?;
    let mut data = Vec::with_capacity(meta.len() as usize);
    file.take(limit + 1).read_to_end(&mut data).map_err(|e| fail(format!("cannot read ({e})")))?;
    if data.len() as u64 > limit {
        return Err(fail(format!("the file grew past {limit} bytes while it was read")));
    }
    Ok(data)
}

/// Read, decode, crop and resize one file into `out`.
pub fn decode_file(path: &Path, crop: impl Into<Crop>, size: usize, out: &mut [u8]) -> Result<(), DecodeError> {
    decode_file_bounded(path, crop, size, DEFAULT_MAX_PIXELS, out)
}

/// `decode_file` with a bound on the header's width x height.
pub fn decode_file_bounded(path: &Path, crop: impl Into<Crop>, size: usize, max_pixels: u64, out: &mut [u8]) -> Result<(), DecodeError> {
    let err = |f: Failure| DecodeError { path: path.display().to_string(), reason: f.reason, kind: f.kind };
    let data = read_bounded(path, max_file_bytes(max_pixels)).map_err(err)?;
    decode_bytes_bounded(&data, crop, size, max_pixels, out).map_err(err)
}

/// Decode many files in parallel into `out` (n * size * size * 3 bytes, image-major). Returns the
/// failures in file order; their slots in `out` are zeros.
pub fn decode_files<P: AsRef<Path> + Sync>(paths: &[P], crop: impl Into<Crop>, size: usize, out: &mut [u8]) -> Vec<(usize, DecodeError)> {
    decode_files_bounded(paths, crop, size, DEFAULT_MAX_PIXELS, out)
}

/// `decode_files` with a bound on each header's width x height.
pub fn decode_files_bounded<P: AsRef<Path> + Sync>(
    paths: &[P],
    crop: impl Into<Crop>,
    size: usize,
    max_pixels: u64,
    out: &mut [u8],
) -> Vec<(usize, DecodeError)> {
    let crop = crop.into();
    let per = size * size * 3;
    assert_eq!(out.len(), per * paths.len(), "out must hold paths.len() images");
    let mut failures: Vec<(usize, DecodeError)> = out
        .par_chunks_mut(per)
        .zip(paths.par_iter())
        .enumerate()
        .filter_map(|(i, (slot, path))| match decode_file_bounded(path.as_ref(), crop, size, max_pixels, slot) {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A CelebA-sized (178 wide, 218 high) RGB image whose red channel is the row index and green
    /// channel the column index, so every pixel says where it came from.
    fn coordinates(w: usize, h: usize) -> Vec<u8> {
        (0..h).flat_map(|r| (0..w).flat_map(move |c| [r as u8, c as u8, 7])).collect()
    }

    fn kept(crop: impl Into<Crop>, size: usize) -> Vec<u8> {
        let mut out = vec![0u8; size * size * 3];
        crop_resize(coordinates(178, 218), 178, 218, crop, size, &mut out).unwrap();
        out
    }

    #[test]
    fn a_box_crop_keeps_exactly_its_rows_and_columns() {
        // (top, left, side): Two-Stage VAE's 128 and 140 (= WAE), Real NVP's 148, the centred 148
        for (top, left, side) in [(45, 25, 128), (39, 19, 140), (40, 15, 148), (35, 15, 148)] {
            // resized to its own size the box comes back pixel for pixel
            let out = kept(Crop::Box { top, left, height: side, width: side }, side);
            for i in 0..side {
                for j in 0..side {
                    let p = &out[3 * (i * side + j)..3 * (i * side + j) + 3];
                    assert_eq!(p, [(top + i) as u8, (left + j) as u8, 7], "box at ({top}, {left}), pixel ({i}, {j})");
                }
            }
        }
    }

    #[test]
    fn a_resized_box_crop_samples_its_own_region() {
        // A linear ramp stays linear under Lanczos: output row i of a 128 -> 64 resize sits at
        // input row top + 2i + 0.5. Away from the edges the values say which rows were kept.
        let (top, left, side, size) = (45usize, 25usize, 128usize, 64usize);
        let out = kept(Crop::Box { top, left, height: side, width: side }, size);
        for i in 4..size - 4 {
            for j in 4..size - 4 {
                let p = &out[3 * (i * size + j)..];
                let (want_r, want_c) = (top as f64 + 2.0 * i as f64 + 0.5, left as f64 + 2.0 * j as f64 + 0.5);
                assert!((p[0] as f64 - want_r).abs() <= 1.0, "row of ({i}, {j}): {} vs {want_r}", p[0]);
                assert!((p[1] as f64 - want_c).abs() <= 1.0, "column of ({i}, {j}): {} vs {want_c}", p[1]);
            }
        }
    }

    #[test]
    fn the_centred_forms_are_boxes_too() {
        assert_eq!(Crop::from(None), Crop::Full);
        assert_eq!(Crop::from(Some(0)), Crop::Shorter);
        assert_eq!(Crop::from(Some(148)), Crop::Centred(148));
        // on a 178 x 218 image the centred 148 is rows 35:183, columns 15:163
        assert_eq!(Crop::Centred(148).region(178, 218), Ok((15, 35, 148, 148)));
        assert_eq!(kept(Some(148), 148), kept(Crop::Box { top: 35, left: 15, height: 148, width: 148 }, 148));
        // the shorter side's square: rows 20:198, all columns
        assert_eq!(Crop::Shorter.region(178, 218), Ok((0, 20, 178, 178)));
        assert_eq!(kept(Some(0), 32), kept(Crop::Box { top: 20, left: 0, height: 178, width: 178 }, 32));
        assert_eq!(kept(None, 16), kept(Crop::Box { top: 0, left: 0, height: 218, width: 178 }, 16));
    }

    #[test]
    fn a_box_that_does_not_fit_is_an_error_not_a_panic() {
        let mut out = vec![0u8; 4 * 4 * 3];
        for (top, left, height, width) in [(71, 15, 148, 148), (40, 31, 148, 148), (0, 0, 219, 10), (usize::MAX, 0, 2, 2), (0, usize::MAX, 2, 2)] {
            let err = crop_resize(coordinates(178, 218), 178, 218, Crop::Box { top, left, height, width }, 4, &mut out).unwrap_err();
            assert!(err.contains("does not fit") && err.contains("178x218"), "{err}");
        }
        let err = crop_resize(coordinates(178, 218), 178, 218, Crop::Box { top: 0, left: 0, height: 0, width: 5 }, 4, &mut out).unwrap_err();
        assert!(err.contains("empty"), "{err}");
        // the box that touches the bottom-right corner fits
        crop_resize(coordinates(178, 218), 178, 218, Crop::Box { top: 70, left: 30, height: 148, width: 148 }, 4, &mut out).unwrap();
    }
}
