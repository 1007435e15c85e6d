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

/// The bytes of a JPEG whose start-of-frame marker is patched to claim `w` x `h` pixels (the scan
/// stays the small image's, so decoding it would fail, but only after allocating w * h * 3 bytes).
fn claiming(name: &str, w: u16, h: u16) -> Vec<u8> {
    let mut bytes = std::fs::read(data(name)).unwrap();
    let sof = bytes.windows(2).position(|m| m[0] == 0xFF && (m[1] == 0xC0 || m[1] == 0xC2)).expect("a SOF marker");
    bytes[sof + 5..sof + 7].copy_from_slice(&h.to_be_bytes());
    bytes[sof + 7..sof + 9].copy_from_slice(&w.to_be_bytes());
    bytes
}

#[test]
fn an_image_over_the_pixel_bound_is_refused_from_its_header() {
    use _native::decode::{decode_bytes_bounded, decode_rgb_bounded, FailureKind, DEFAULT_MAX_PIXELS};
    let mut out = vec![0u8; 4 * 4 * 3];
    for (name, w, h) in [("rgb30x20.jpg", 20000, 20000), ("progressive30x20.jpg", 60000, 60000), ("gray30x20.jpg", 65535, 1000)] {
        let bytes = claiming(name, w, h);
        let err = decode_rgb_bounded(&bytes, DEFAULT_MAX_PIXELS).unwrap_err();
        assert_eq!(err.kind, FailureKind::TooLarge, "{name}: {err:?}");
        assert!(err.reason.contains(&format!("{w}x{h}")) && err.reason.contains("40000000"), "{}", err.reason);
        let err = decode_bytes_bounded(&bytes, None, 4, DEFAULT_MAX_PIXELS, &mut out).unwrap_err();
        assert_eq!(err.kind, FailureKind::TooLarge);
    }
    // the bound is the caller's: 30 x 20 = 600 pixels pass a bound of 600, not one of 599
    let bytes = std::fs::read(data("rgb30x20.jpg")).unwrap();
    assert!(decode_bytes_bounded(&bytes, None, 4, 600, &mut out).is_ok());
    let err = decode_bytes_bounded(&bytes, None, 4, 599, &mut out).unwrap_err();
    assert_eq!(err.kind, FailureKind::TooLarge);
    assert!(err.reason.contains("30x20 = 600 pixels") && err.reason.contains("599"), "{}", err.reason);
    // a bound above zune-jpeg's own default (16384 per side) is honoured: a 20000-wide header is
    // then decoded (zune-jpeg fills the missing scan), not refused
    let decoded = decode_rgb_bounded(&claiming("rgb30x20.jpg", 20000, 200), 10_000_000);
    assert_eq!(decoded.map(|(_, w, h)| (w, h)).map_err(|e| e.kind), Ok((20000, 200)));
}

#[test]
fn directories_and_special_files_are_read_errors_not_images() {
    use _native::decode::{decode_file_bounded, decode_files_bounded, FailureKind};
    let dir = std::env::temp_dir().join(format!("vaeflow-native-dirs-{}", std::process::id()));
    let fake = dir.join("x.jpg");
    std::fs::create_dir_all(&fake).unwrap();
    let mut out = vec![0u8; 4 * 4 * 3];
    let err = decode_file_bounded(&fake, None, 4, 1000, &mut out).unwrap_err();
    assert_eq!(err.kind, FailureKind::Read);
    assert!(err.reason.contains("directory") && err.to_string().contains("x.jpg"), "{err}");
    #[cfg(unix)]
    {
        let err = decode_file_bounded(std::path::Path::new("/dev/zero"), None, 4, 1000, &mut out).unwrap_err();
        assert!(err.kind == FailureKind::Read && err.reason.contains("not a regular file"), "{err}");
    }
    // a file longer than any image within the bound needs is not read
    let long = dir.join("long.jpg");
    std::fs::write(&long, vec![0u8; (64 << 20) + 1]).unwrap();
    let err = decode_file_bounded(&long, None, 4, 1000, &mut out).unwrap_err();
    assert!(err.kind == FailureKind::Read && err.reason.contains("bytes"), "{err}");
    let paths = vec![data("rgb30x20.jpg"), fake.clone(), data("gray30x20.jpg")];
    let mut many = vec![0u8; 4 * 4 * 3 * 3];
    let failures = decode_files_bounded(&paths, None, 4, 1000, &mut many);
    assert_eq!(failures.iter().map(|(i, e)| (*i, e.kind)).collect::<Vec<_>>(), vec![(1, FailureKind::Read)]);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_crop_that_does_not_fit_is_its_own_kind() {
    use _native::decode::{decode_file_bounded, FailureKind, DEFAULT_MAX_PIXELS};
    let mut out = vec![0u8; 4 * 4 * 3];
    let err = decode_file_bounded(&data("rgb30x20.jpg"), Some(21), 4, DEFAULT_MAX_PIXELS, &mut out).unwrap_err();
    assert_eq!(err.kind, FailureKind::Crop, "{err}");
    let err = decode_file_bounded(&data("fuzz-progressive-panic.jpg"), None, 4, DEFAULT_MAX_PIXELS, &mut out).unwrap_err();
    assert_eq!(err.kind, FailureKind::Decode, "{err}");
}
