//! UCI's optical digits: the shipped files, the 8x8-to-28x28 conversion, the CSV they
//! are made from, and hostile files.

use std::io::Write;
use std::path::PathBuf;

use dl_data::optdigits::{parse_csv, to_ink, to_mnist, OPTDIGITS_FILES};
use dl_data::{encode_idx, load_optdigits, sha256_hex, DataError, MANIFEST};

fn shipped() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../datasets/optdigits")
}

/// (row, column) centre of mass of a 28x28 image.
fn centre(img: &[u8]) -> (f64, f64) {
    let (mut m, mut y, mut x) = (0.0, 0.0, 0.0);
    for (i, &v) in img.iter().enumerate() {
        let v = f64::from(v);
        m += v;
        y += v * (i / 28) as f64;
        x += v * (i % 28) as f64;
    }
    (y / m, x / m)
}

#[test]
fn the_shipped_digits_load_as_mnist_like_images() {
    let set = load_optdigits(shipped()).unwrap();
    assert_eq!(
        (set.len(), set.channels, set.height, set.width, set.classes),
        (1797, 1, 28, 28, 10)
    );
    let per_class: Vec<usize> = (0..10u8)
        .map(|c| set.labels.iter().filter(|&&l| l == c).count())
        .collect();
    assert_eq!(per_class, [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]);
    assert_eq!(set.labels[..10], [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    for img in set.images.chunks_exact(784) {
        let (y, x) = centre(img);
        assert!((y - 14.0).abs() <= 1.0 && (x - 14.0).abs() <= 1.0, "centre ({y}, {x})");
        assert!(*img.iter().max().unwrap() >= 128, "full ink somewhere");
        // inside MNIST's 20x20 box: the outer 3 rows stay black on at least one side
        let rows: Vec<usize> = (0..28)
            .filter(|r| img[r * 28..(r + 1) * 28].iter().any(|&v| v > 0))
            .collect();
        assert!(rows.len() <= 20, "{} rows of ink", rows.len());
    }
}

#[test]
fn counts_are_interpolated_between_block_centres() {
    // constant counts: constant ink
    let ink = to_ink(&[8; 64]).unwrap();
    assert_eq!(ink.len(), 32 * 32);
    assert!(ink.iter().all(|&v| (v - 0.5).abs() < 1e-6));
    // a ramp along x (count 2x in column x): ink linear in the pixel position between
    // the first and last block centres (pixels 2 and 29), flat beyond them
    let ramp: Vec<u8> = (0..64).map(|i| 2 * (i % 8) as u8).collect();
    let ink = to_ink(&ramp).unwrap();
    for y in [0, 13, 31] {
        for px in 0..32 {
            let t = ((px as f32 + 0.5) / 4.0 - 0.5).clamp(0.0, 7.0);
            let want = 2.0 * t / 16.0;
            assert!(
                (ink[y * 32 + px] - want).abs() < 1e-6,
                "({y}, {px}): {} vs {want}",
                ink[y * 32 + px]
            );
        }
    }
    // the same ramp down the rows is the transpose
    let down: Vec<u8> = (0..64).map(|i| 2 * (i / 8) as u8).collect();
    let ink_down = to_ink(&down).unwrap();
    for y in 0..32 {
        for x in 0..32 {
            assert_eq!(ink_down[y * 32 + x], ink[x * 32 + y]);
        }
    }
    // one full block: pixel centres 0.5 and 1.5 block-quarters from its centre keep
    // 0.875 and 0.625 of its ink in each direction, symmetric about it
    let mut one = [0u8; 64];
    one[3 * 8 + 4] = 16;
    let ink = to_ink(&one).unwrap();
    let at = |y: usize, x: usize| ink[y * 32 + x];
    assert!((at(13, 17) - 0.875 * 0.875).abs() < 1e-6);
    assert!((at(12, 17) - 0.625 * 0.875).abs() < 1e-6);
    assert_eq!(at(13, 17), at(14, 18));
    assert_eq!(at(12, 17), at(15, 18));
    assert_eq!(at(0, 0), 0.0);
    // mirroring the grid mirrors the image: the scheme treats both edges alike
    let grid: Vec<u8> = (0..64u32).map(|i| ((i * 37 + 11) % 17) as u8).collect();
    let mirrored: Vec<u8> = (0..64).map(|i| grid[(i / 8) * 8 + 7 - i % 8]).collect();
    let (a, b) = (to_ink(&grid).unwrap(), to_ink(&mirrored).unwrap());
    for y in 0..32 {
        for x in 0..32 {
            assert!((a[y * 32 + x] - b[y * 32 + 31 - x]).abs() < 1e-6, "({y}, {x})");
        }
    }
}

#[test]
fn bad_grids_are_typed_errors() {
    for (grid, says) in [
        (vec![0u8; 63], "63 counts"),
        (vec![17u8; 64], "above 16"),
        (vec![0u8; 64], "no ink"),
    ] {
        let e = to_mnist(&grid).unwrap_err();
        assert!(
            matches!(e, DataError::BadImage { .. }) && e.to_string().contains(says),
            "{e}"
        );
    }
    let digit = to_mnist(&[16; 64]).unwrap();
    assert_eq!(digit.len(), 784);
    assert_eq!(
        digit.iter().filter(|&&v| v == 255).count(),
        400,
        "a full square fills the 20x20 box"
    );
}

fn line(counts: &str, label: &str) -> String {
    format!("{counts},{label}\n")
}

#[test]
fn the_csv_is_read_strictly_with_the_line_of_each_fault() {
    let zeros = vec!["0"; 64].join(",");
    let sixteens = vec!["16"; 64].join(",");
    let text = format!("{}\n{}", line(&zeros, "3"), line(&sixteens, "9"));
    let (counts, labels) = parse_csv(&text).unwrap();
    assert_eq!(labels, [3, 9]);
    assert_eq!(counts.len(), 128);
    assert!(counts[..64].iter().all(|&c| c == 0) && counts[64..].iter().all(|&c| c == 16));
    let short = vec!["0"; 63].join(",");
    for (bad, says) in [
        (line(&short, "1"), "64 fields, expected 65"),
        (line(&zeros, "10"), "label \"10\""),
        (line(&sixteens.replacen("16", "17", 1), "1"), "field 1: count \"17\""),
        (line(&zeros.replacen('0', "x", 1), "1"), "count \"x\""),
        (line(&zeros.replacen('0', "-1", 1), "1"), "count \"-1\""),
    ] {
        let text = format!("{}{bad}", line(&zeros, "0"));
        let e = parse_csv(&text).unwrap_err();
        assert!(matches!(e, DataError::Csv { line: 2, .. }), "{e}");
        assert!(
            e.to_string().contains(says) && e.to_string().starts_with("CSV line 2"),
            "{e}"
        );
    }
    assert_eq!(parse_csv("\n\n").unwrap(), (vec![], vec![]));
}

fn write_gz(path: &std::path::Path, bytes: &[u8]) {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    std::fs::write(path, e.finish().unwrap()).unwrap();
}

#[test]
fn hostile_files_are_typed_errors_that_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let [images, labels] = OPTDIGITS_FILES;
    let mut grids = vec![16u8; 2 * 64];
    write_gz(
        &dir.path().join(format!("{labels}.gz")),
        &encode_idx(&[2], &[4, 2]).unwrap(),
    );
    // a good pair loads
    write_gz(
        &dir.path().join(format!("{images}.gz")),
        &encode_idx(&[2, 8, 8], &grids).unwrap(),
    );
    let set = load_optdigits(dir.path()).unwrap();
    assert_eq!((set.len(), set.labels.clone()), (2, vec![4, 2]));
    // grids of the wrong shape
    std::fs::write(dir.path().join(format!("{images}.gz")), b"").unwrap();
    write_gz(
        &dir.path().join(format!("{images}.gz")),
        &encode_idx(&[2, 8, 9], &[1; 144]).unwrap(),
    );
    let e = load_optdigits(dir.path()).unwrap_err();
    assert!(
        matches!(e, DataError::Dimensions { .. }) && e.to_string().contains(images),
        "{e}"
    );
    // a count above 16
    grids[70] = 17;
    write_gz(
        &dir.path().join(format!("{images}.gz")),
        &encode_idx(&[2, 8, 8], &grids).unwrap(),
    );
    let e = load_optdigits(dir.path()).unwrap_err();
    assert!(e.to_string().contains("count 17 at byte 70"), "{e}");
    // a digit with no ink
    grids[70] = 16;
    grids[..64].fill(0);
    write_gz(
        &dir.path().join(format!("{images}.gz")),
        &encode_idx(&[2, 8, 8], &grids).unwrap(),
    );
    let e = load_optdigits(dir.path()).unwrap_err();
    assert!(
        e.to_string().contains("digit 0") && e.to_string().contains("no ink"),
        "{e}"
    );
    // a file that is not the one the manifest names
    std::fs::write(
        dir.path().join(MANIFEST),
        format!("{}  {images}\n", sha256_hex(b"something else")),
    )
    .unwrap();
    assert!(matches!(
        load_optdigits(dir.path()).unwrap_err(),
        DataError::Checksum { .. }
    ));
    // a label beyond 9, and a missing file
    std::fs::remove_file(dir.path().join(MANIFEST)).unwrap();
    grids[..64].fill(16);
    write_gz(
        &dir.path().join(format!("{images}.gz")),
        &encode_idx(&[2, 8, 8], &grids).unwrap(),
    );
    write_gz(
        &dir.path().join(format!("{labels}.gz")),
        &encode_idx(&[2], &[4, 10]).unwrap(),
    );
    assert!(matches!(
        load_optdigits(dir.path()).unwrap_err(),
        DataError::LabelOutOfRange { .. }
    ));
    std::fs::remove_file(dir.path().join(format!("{labels}.gz"))).unwrap();
    let e = load_optdigits(dir.path()).unwrap_err();
    assert!(
        matches!(e, DataError::Missing { .. }) && e.to_string().contains("convert-optdigits"),
        "{e}"
    );
}
