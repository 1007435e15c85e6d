//! Compare JPEG decoders on a folder of JPEGs (the measurement behind the choice of zune-jpeg):
//!
//!     python benchmarks/data.py --keep-jpegs /tmp/jpegs   # or any folder of CelebA JPEGs
//!     cargo run --release -p vaeflow-native --example decoders -- /tmp/jpegs
//!
//! Prints microseconds per image, one thread: zune-jpeg full decode, zune-jpeg decode + crop 148 +
//! Lanczos resize to 64 (what vaeflow does), and jpeg-decoder with DCT-domain downscaling to the
//! smallest scale that still covers the 64-pixel crop, and at full size.
use std::time::Instant;

fn per_image(files: &[Vec<u8>], mut f: impl FnMut(&[u8])) -> f64 {
    f(&files[0]);
    let t = Instant::now();
    for data in files {
        f(data);
    }
    t.elapsed().as_secs_f64() / files.len() as f64 * 1e6
}

fn main() {
    let dir = std::env::args().nth(1).expect("usage: decoders FOLDER_OF_JPEGS");
    let mut files: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .expect("cannot read the folder")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "jpg" || x == "jpeg"))
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    files.truncate(2000);
    assert!(!files.is_empty(), "no .jpg files in {dir}");
    let mut out = vec![0u8; 64 * 64 * 3];
    let zune = per_image(&files, |d| {
        std::hint::black_box(_native::decode::decode_rgb(d).unwrap());
    });
    let zune_resize = per_image(&files, |d| {
        let (rgb, w, h) = _native::decode::decode_rgb(d).unwrap();
        _native::decode::crop_resize(rgb, w, h, Some(148), 64, &mut out).unwrap();
    });
    let jd_scaled = per_image(&files, |d| {
        let mut dec = jpeg_decoder::Decoder::new(std::io::Cursor::new(d));
        dec.read_info().unwrap();
        let info = dec.info().unwrap();
        let (w, h) = (info.width as f64 * 64.0 / 148.0, info.height as f64 * 64.0 / 148.0);
        dec.scale(w.ceil() as u16, h.ceil() as u16).unwrap();
        std::hint::black_box(dec.decode().unwrap());
    });
    let jd_full = per_image(&files, |d| {
        std::hint::black_box(jpeg_decoder::Decoder::new(std::io::Cursor::new(d)).decode().unwrap());
    });
    println!("{} images, microseconds per image (1 thread):", files.len());
    println!("  zune-jpeg decode                      {zune:8.1}");
    println!("  zune-jpeg decode + crop + resize      {zune_resize:8.1}");
    println!("  jpeg-decoder, DCT-scaled decode only  {jd_scaled:8.1}");
    println!("  jpeg-decoder, full decode             {jd_full:8.1}");
}
