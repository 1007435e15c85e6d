use _native::decode::{crop_resize, decode_file, decode_files, decode_rgb};
use std::path::PathBuf;

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name)
}

#[test]
fn decodes_rgb_grayscale_and_progressive_jpegs() {
    for name in ["rgb30x20.jpg", "gray30x20.jpg", "progressive30x20.jpg"] {
        let (rgb, w, h) = decode_rgb(&std::fs::read(data(name)).unwrap()).unwrap();
        assert_eq!((w, h, rgb.len()), (30, 20, 30 * 20 * 3), "{name}");
    }
    // the test image is a gradient: red grows along x
    let (rgb, _, _) = decode_rgb(&std::fs::read(data("rgb30x20.jpg")).unwrap()).unwrap();
    assert!(rgb[3 * 29] > rgb[0] + 150);
}

#[test]
fn crop_and_resize_give_the_requested_square() {
    let (rgb, w, h) = decode_rgb(&std::fs::read(data("rgb30x20.jpg")).unwrap()).unwrap();
    let mut out = vec![0u8; 8 * 8 * 3];
    crop_resize(rgb.clone(), w, h, Some(16), 8, &mut out).unwrap();
    assert!(out.iter().any(|&v| v > 0));
    crop_resize(rgb.clone(), w, h, Some(0), 8, &mut out).unwrap(); // 20x20, the shorter side
    let err = crop_resize(rgb, w, h, Some(21), 8, &mut out).unwrap_err();
    assert!(err.contains("smaller than the crop"), "{err}");
}

#[test]
fn truncated_and_garbage_files_are_errors_naming_the_file() {
    let dir = std::env::temp_dir().join(format!("vaeflow-native-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bytes = std::fs::read(data("rgb30x20.jpg")).unwrap();
    let truncated = dir.join("truncated.jpg");
    std::fs::write(&truncated, &bytes[..bytes.len() / 3]).unwrap();
    let garbage = dir.join("garbage.jpg");
    std::fs::write(&garbage, b"this is not a jpeg").unwrap();
    let missing = dir.join("missing.jpg");
    let mut out = vec![0u8; 4 * 4 * 3];
    for path in [&garbage, &missing] {
        let err = decode_file(path, None, 4, &mut out).unwrap_err();
        assert_eq!(err.path, path.display().to_string());
    }
    let err = decode_file(&truncated, None, 4, &mut out).unwrap_err();
    assert!(err.to_string().contains("truncated.jpg") && err.reason.contains("truncated"), "{err}");
    let paths = vec![data("rgb30x20.jpg"), garbage.clone(), data("gray30x20.jpg"), missing.clone()];
    let mut many = vec![7u8; 4 * 4 * 3 * 4];
    let failures = decode_files(&paths, Some(20), 4, &mut many);
    assert_eq!(failures.iter().map(|(i, _)| *i).collect::<Vec<_>>(), vec![1, 3]);
    assert!(many[48..96].iter().all(|&v| v == 0));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_truncated_jpeg_is_an_error() {
    let bytes = std::fs::read(data("rgb30x20.jpg")).unwrap();
    for cut in [bytes.len() / 3, bytes.len() / 2, bytes.len() - 2] {
        assert!(decode_rgb(&bytes[..cut]).is_err(), "cut at {cut} of {} decoded", bytes.len());
    }
}

#[test]
fn a_decoder_panic_found_by_fuzzing_is_an_error_for_that_file() {
    // cargo fuzz found these files: zune-jpeg 0.4.21 unwraps a None in its progressive decoder,
    // and fails an assertion in its upsampler.
    let mut out = vec![0u8; 4 * 4 * 3];
    for name in ["fuzz-progressive-panic.jpg", "fuzz-upsampler-panic.jpg"] {
        let err = decode_file(&data(name), None, 4, &mut out).unwrap_err();
        assert!(err.reason.contains("panicked"), "{err}");
        assert!(err.to_string().contains(name));
    }
    // the same thread decodes the next file normally
    decode_file(&data("rgb30x20.jpg"), None, 4, &mut out).unwrap();
}
