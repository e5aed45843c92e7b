use std::io::Write;
use std::path::{Path, PathBuf};

use dl_data::{load_mnist, BatchOrder, DataError, ImageSet, LabelArray, LoadOptions, Mnist, MNIST_FILES};

fn shipped() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../datasets/mnist")
}

fn idx(code_dims: &[u32], body: &[u8]) -> Vec<u8> {
    let mut v = vec![0, 0, 8, code_dims.len() as u8];
    for d in code_dims {
        v.extend_from_slice(&d.to_be_bytes());
    }
    v.extend_from_slice(body);
    v
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// A tiny MNIST-shaped folder: 3 train and 2 test images of 2x2.
fn tiny(dir: &Path) {
    std::fs::write(
        dir.join(MNIST_FILES[0]),
        idx(&[3, 2, 2], &[0, 255, 10, 20, 1, 2, 3, 4, 5, 6, 7, 8]),
    )
    .unwrap();
    std::fs::write(dir.join(format!("{}.gz", MNIST_FILES[1])), gz(&idx(&[3], &[5, 0, 9]))).unwrap();
    std::fs::write(dir.join(MNIST_FILES[2]), idx(&[2, 2, 2], &[9; 8])).unwrap();
    std::fs::write(dir.join(MNIST_FILES[3]), idx(&[2], &[1, 2])).unwrap();
}

#[test]
fn the_shipped_mnist_loads_with_checksums_and_known_labels() {
    let m = Mnist::load(shipped()).unwrap();
    assert_eq!((m.train.len(), m.test.len()), (60_000, 10_000));
    assert_eq!((m.train.height, m.train.width), (28, 28));
    assert_eq!(&m.train.labels[..10], &[5, 0, 4, 1, 9, 2, 1, 3, 1, 4]);
    assert_eq!(&m.test.labels[..10], &[7, 2, 1, 0, 4, 1, 4, 9, 5, 9]);
}

#[test]
fn load_mnist_honours_the_books_options() {
    let dir = tempfile::tempdir().unwrap();
    tiny(dir.path());
    let ((x, t), (xt, tt)) = load_mnist(dir.path(), LoadOptions::default()).unwrap();
    assert_eq!(x.shape(), &[3, 4]);
    assert_eq!(x[[0, 1]], 1.0);
    assert_eq!(t, LabelArray::Indices(vec![5, 0, 9]));
    assert_eq!(xt.shape(), &[2, 4]);
    assert_eq!(tt, LabelArray::Indices(vec![1, 2]));
    let opts = LoadOptions {
        normalize: false,
        flatten: false,
        one_hot_label: true,
    };
    let ((x, t), _) = load_mnist(dir.path(), opts).unwrap();
    assert_eq!(x.shape(), &[3, 1, 2, 2]);
    assert_eq!(x[[0, 0, 0, 1]], 255.0);
    match t {
        LabelArray::OneHot(t) => {
            assert_eq!(t.dim(), (3, 10));
            assert_eq!(t.row(0).to_vec(), vec![0., 0., 0., 0., 0., 1., 0., 0., 0., 0.]);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_file_that_does_not_match_the_manifest_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    tiny(dir.path());
    let manifest: String = MNIST_FILES
        .iter()
        .map(|f| {
            let bytes = dl_data::read_maybe_gzip(&{
                let raw = dir.path().join(f);
                if raw.exists() {
                    raw
                } else {
                    dir.path().join(format!("{f}.gz"))
                }
            })
            .unwrap();
            format!("{}  {f}\n", dl_data::sha256_hex(&bytes))
        })
        .collect();
    // comments and blank lines are skipped
    let commented = format!("# SHA-256 of the uncompressed files\n\n{manifest}");
    std::fs::write(dir.path().join("SHA256SUMS.uncompressed"), commented).unwrap();
    Mnist::load(dir.path()).unwrap();
    // a hash one digit short, or of 64 characters not all hex, is a malformed line
    let first = manifest.lines().next().unwrap();
    for bad in [&first[1..], &format!("g{}", &first[1..])] {
        let text = format!("# checksums\n{bad}\n");
        std::fs::write(dir.path().join("SHA256SUMS.uncompressed"), text).unwrap();
        let e = Mnist::load(dir.path()).unwrap_err();
        assert!(matches!(e, DataError::Manifest { line: 2, .. }), "{bad}: {e}");
    }
    std::fs::write(dir.path().join("SHA256SUMS.uncompressed"), manifest).unwrap();
    Mnist::load(dir.path()).unwrap();
    // flip one pixel: still valid IDX, but not the file the manifest describes
    std::fs::write(
        dir.path().join(MNIST_FILES[2]),
        idx(&[2, 2, 2], &[9, 9, 9, 9, 9, 9, 9, 8]),
    )
    .unwrap();
    let e = Mnist::load(dir.path()).unwrap_err();
    assert!(matches!(e, DataError::Checksum { .. }), "{e}");
    assert!(e.to_string().contains(MNIST_FILES[2]), "{e}");
    // a malformed manifest is named too
    std::fs::write(dir.path().join("SHA256SUMS.uncompressed"), "nonsense\n").unwrap();
    assert!(matches!(
        Mnist::load(dir.path()),
        Err(DataError::Manifest { line: 1, .. })
    ));
}

#[test]
fn inconsistent_files_are_typed_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    tiny(dir.path());
    std::fs::write(dir.path().join(MNIST_FILES[3]), idx(&[3], &[1, 2, 3])).unwrap();
    assert!(matches!(
        Mnist::load(dir.path()),
        Err(DataError::CountMismatch {
            n_images: 2,
            n_labels: 3,
            ..
        })
    ));
    std::fs::write(dir.path().join(MNIST_FILES[3]), idx(&[2], &[1, 10])).unwrap();
    let e = Mnist::load(dir.path()).unwrap_err();
    assert!(
        matches!(
            e,
            DataError::LabelOutOfRange {
                index: 1,
                value: 10,
                ..
            }
        ),
        "{e}"
    );
    std::fs::write(dir.path().join(MNIST_FILES[3]), idx(&[2, 1], &[1, 1])).unwrap();
    assert!(matches!(Mnist::load(dir.path()), Err(DataError::Dimensions { .. })));
    // truncated images
    let mut cut = idx(&[2, 2, 2], &[9; 8]);
    cut.truncate(cut.len() - 3);
    std::fs::write(dir.path().join(MNIST_FILES[2]), cut).unwrap();
    let e = Mnist::load(dir.path()).unwrap_err();
    assert!(
        e.to_string().contains("truncated") && e.to_string().contains(MNIST_FILES[2]),
        "{e}"
    );
    std::fs::remove_file(dir.path().join(MNIST_FILES[2])).unwrap();
    let e = Mnist::load(dir.path()).unwrap_err();
    assert!(
        matches!(e, DataError::Missing { .. }) && e.to_string().contains("cargo xtask download"),
        "{e}"
    );
}

#[test]
fn batch_order_visits_every_sample_once_per_epoch_in_a_seeded_order() {
    let order = BatchOrder::new(1003, 100, 7);
    assert_eq!(order.batches_per_epoch(), 11);
    for epoch in 0..3 {
        let batches: Vec<Vec<usize>> = order.epoch(epoch).collect();
        assert_eq!(batches.last().unwrap().len(), 3);
        let mut seen: Vec<usize> = batches.concat();
        seen.sort_unstable();
        assert_eq!(seen, (0..1003).collect::<Vec<_>>());
    }
    let a: Vec<Vec<usize>> = order.epoch(0).collect();
    assert_eq!(a, BatchOrder::new(1003, 100, 7).epoch(0).collect::<Vec<_>>());
    assert_ne!(a, order.epoch(1).collect::<Vec<_>>(), "epochs differ");
    assert_ne!(
        a,
        BatchOrder::new(1003, 100, 8).epoch(0).collect::<Vec<_>>(),
        "seeds differ"
    );
    assert_ne!(a[0], (0..100).collect::<Vec<_>>(), "shuffled");
    let dropped = BatchOrder::new(1003, 100, 7).drop_last(true);
    assert_eq!(dropped.epoch(0).count(), 10);
}

#[test]
fn batches_convert_bytes_to_unit_floats() {
    let set = ImageSet::new(vec![0, 255, 51, 102, 1, 2, 3, 4], vec![3, 1], 2, 2, 10).unwrap();
    let (x, t) = set.batch(&[1, 0]);
    assert_eq!(x.shape(), &[2, 1, 2, 2]);
    assert_eq!(t, vec![1, 3]);
    assert_eq!(x[[1, 0, 0, 1]], 1.0);
    assert!((x[[1, 0, 1, 0]] - 0.2).abs() < 1e-7);
    assert!(ImageSet::new(vec![0; 8], vec![3, 10], 2, 2, 10).is_err());
    assert!(ImageSet::new(vec![0; 7], vec![3, 1], 2, 2, 10).is_err());
    assert_eq!(set.take(1).labels, vec![3]);
}

#[test]
fn images_of_several_channels_batch_as_nchw() {
    // two 3-channel 1x2 images: channel-major within an image
    let pixels: Vec<u8> = (0..12).map(|v| v * 20).collect();
    let set = ImageSet::with_channels(pixels, vec![4, 7], (3, 1, 2), 10).unwrap();
    assert_eq!(set.image_len(), 6);
    let (x, t) = set.batch(&[1]);
    assert_eq!(x.shape(), &[1, 3, 1, 2]);
    assert_eq!(t, vec![7]);
    assert!((x[[0, 2, 0, 1]] - 220.0 / 255.0).abs() < 1e-6);
    assert_eq!(set.to_f32(false, true).shape(), &[2, 6]);
    // 15 bytes hold two whole 1x2x3 images and half a third: counted as 2; and 29 bytes
    // two whole 2x3x2 images (a shape where C + H * W, C * H + W, C / H * W and
    // C * H / W are all other image sizes)
    for (bytes, shape) in [(15, (1, 2, 3)), (29, (2, 3, 2))] {
        match ImageSet::with_channels(vec![0; bytes], vec![4, 7, 1], shape, 10) {
            Err(DataError::CountMismatch { n_images, n_labels, .. }) => assert_eq!((n_images, n_labels), (2, 3)),
            other => panic!("{other:?}"),
        }
    }
    // the first n images, with their pixels
    let first = set.take(1);
    assert_eq!((first.len(), first.is_empty()), (1, false));
    assert_eq!(first.images, (0..6).map(|v| v * 20).collect::<Vec<u8>>());
    assert!(set.take(0).is_empty());
    assert_eq!(set.take(5), set);
}

#[test]
fn a_validation_split_is_disjoint_seeded_and_keeps_the_order() {
    // image i holds the byte i, label i % 10
    let n = 200;
    let set = ImageSet::new((0..n as u8).collect(), (0..n as u8).map(|i| i % 10).collect(), 1, 1, 10).unwrap();
    let (rest, held) = set.split(30, 5);
    assert_eq!((rest.len(), held.len()), (170, 30));
    let mut all: Vec<u8> = rest.images.iter().chain(&held.images).copied().collect();
    all.sort_unstable();
    assert_eq!(all, (0..n as u8).collect::<Vec<_>>(), "every image once");
    assert!(rest.images.windows(2).all(|w| w[0] < w[1]) && held.images.windows(2).all(|w| w[0] < w[1]));
    for part in [&rest, &held] {
        assert!(
            part.images.iter().zip(&part.labels).all(|(&i, &l)| i % 10 == l),
            "labels follow"
        );
    }
    assert_eq!(set.split(30, 5), (rest, held.clone()));
    assert_ne!(set.split(30, 6).1, held, "another seed, another split");
    assert_ne!(held.images, (0..30).collect::<Vec<u8>>(), "drawn, not the first images");
    // at least one image stays for training
    assert_eq!(set.split(500, 0).0.len(), 1);
}

#[test]
fn a_validation_split_keeps_the_class_proportions() {
    // 60 images of class 0, 30 of class 1, 10 of class 2, interleaved
    let labels: Vec<u8> = (0..100u8)
        .map(|i| {
            if i % 10 < 6 {
                0
            } else if i % 10 < 9 {
                1
            } else {
                2
            }
        })
        .collect();
    let set = ImageSet::new((0..100).collect(), labels, 1, 1, 3).unwrap();
    let count = |s: &ImageSet, c: u8| s.labels.iter().filter(|&&l| l == c).count();
    for seed in 0..5 {
        let (rest, held) = set.split(20, seed);
        assert_eq!([0, 1, 2].map(|c| count(&held, c)), [12, 6, 2], "seed {seed}");
        assert_eq!([0, 1, 2].map(|c| count(&rest, c)), [48, 24, 8]);
        assert!(held
            .images
            .iter()
            .zip(&held.labels)
            .all(|(&i, &l)| set.labels[usize::from(i)] == l));
    }
    // shares of 7 are 4.2, 2.1 and 0.7: the largest remainder (0.7) gets the extra one
    let (_, held) = set.split(7, 0);
    assert_eq!([0, 1, 2].map(|c| count(&held, c)), [4, 2, 1]);
    // 5 of 100: 3, 1.5 and 0.5; the tie of remainders goes to the lower class
    let (_, held) = set.split(5, 0);
    assert_eq!([0, 1, 2].map(|c| count(&held, c)), [3, 2, 0]);
    // a class with no image takes no share
    let set = ImageSet::new(vec![0; 4], vec![0, 0, 2, 2], 1, 1, 3).unwrap();
    let (_, held) = set.split(2, 1);
    assert_eq!(held.labels, [0, 2]);
}

#[test]
fn each_bad_idx_header_is_refused_with_its_reason() {
    let cases: [(&[u8], &str); 6] = [
        (&[0, 0, 8], "only 3 bytes, a header needs at least 4"),
        // four bytes are a whole first part of a header
        (
            &[0, 0, 8, 1],
            "the header of 1 dimensions needs 8 bytes, the file has 4",
        ),
        (&[1, 0, 8, 1, 0, 0, 0, 0], "magic number starts 01 00"),
        (&[0, 1, 8, 1, 0, 0, 0, 0], "magic number starts 00 01"),
        (&[0, 0, 7, 1, 0, 0, 0, 0], "unknown element type 0x07"),
        (&[0, 0, 8, 5, 0, 0, 0, 0], "5 dimensions; expected 1 to 4"),
    ];
    for (bytes, want) in cases {
        let err = dl_data::parse_idx(bytes, "x.idx").unwrap_err();
        assert!(
            matches!(err, DataError::NotIdx { .. }) && err.to_string().contains(want),
            "{bytes:?}: {err}, want {want:?}"
        );
    }
    // an empty array of one dimension is a whole file
    assert_eq!(
        dl_data::parse_idx(&[0, 0, 8, 1, 0, 0, 0, 0], "x.idx").unwrap().dims,
        vec![0]
    );
}
