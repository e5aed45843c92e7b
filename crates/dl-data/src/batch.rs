use std::path::PathBuf;

use ndarray::{Array2, ArrayD};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::{DataError, IdxArray};

/// Images with their labels, kept as bytes (`C` channels of `H x W`, channel-major per
/// image, as NCHW); converted to `f32` one batch at a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSet {
    /// `len * channels * height * width` pixels, row-major, image after image.
    pub images: Vec<u8>,
    /// One label per image, each `< classes`.
    pub labels: Vec<u8>,
    /// Channels per image (1 for MNIST).
    pub channels: usize,
    /// Image height.
    pub height: usize,
    /// Image width.
    pub width: usize,
    /// Number of classes.
    pub classes: usize,
}

impl ImageSet {
    /// Builds a set of one-channel images from in-memory pixels and labels, validating
    /// sizes and label range.
    pub fn new(
        images: Vec<u8>,
        labels: Vec<u8>,
        height: usize,
        width: usize,
        classes: usize,
    ) -> Result<Self, DataError> {
        Self::with_channels(images, labels, (1, height, width), classes)
    }

    /// Builds a set of `(C, H, W)` images (channel-major per image) from in-memory
    /// pixels and labels, validating sizes and label range.
    pub fn with_channels(
        images: Vec<u8>,
        labels: Vec<u8>,
        (channels, height, width): (usize, usize, usize),
        classes: usize,
    ) -> Result<Self, DataError> {
        let n = labels.len();
        if images.len() != n * channels * height * width {
            return Err(DataError::CountMismatch {
                images: PathBuf::from("<images>"),
                n_images: images.len() / (channels * height * width).max(1),
                labels: PathBuf::from("<labels>"),
                n_labels: n,
            });
        }
        if let Some((index, &value)) = labels.iter().enumerate().find(|(_, &l)| l as usize >= classes) {
            return Err(DataError::LabelOutOfRange {
                path: PathBuf::from("<labels>"),
                index,
                value,
                classes,
            });
        }
        Ok(Self {
            images,
            labels,
            channels,
            height,
            width,
            classes,
        })
    }

    /// Pairs an images IDX file `(N, H, W)` with a labels IDX file `(N,)`.
    pub fn from_idx(
        images: (IdxArray, PathBuf),
        labels: (IdxArray, PathBuf),
        classes: usize,
    ) -> Result<Self, DataError> {
        let ((img, ipath), (lab, lpath)) = (images, labels);
        if img.dims.len() != 3 {
            return Err(DataError::Dimensions {
                path: ipath,
                dims: img.dims,
                expected: "(N, H, W) images".into(),
            });
        }
        if lab.dims.len() != 1 {
            return Err(DataError::Dimensions {
                path: lpath,
                dims: lab.dims,
                expected: "(N,) labels".into(),
            });
        }
        if img.dims[0] != lab.dims[0] {
            return Err(DataError::CountMismatch {
                images: ipath,
                n_images: img.dims[0],
                labels: lpath,
                n_labels: lab.dims[0],
            });
        }
        if let Some((index, &value)) = lab.data.iter().enumerate().find(|(_, &l)| l as usize >= classes) {
            return Err(DataError::LabelOutOfRange {
                path: lpath,
                index,
                value,
                classes,
            });
        }
        Ok(Self {
            images: img.data,
            labels: lab.data,
            channels: 1,
            height: img.dims[1],
            width: img.dims[2],
            classes,
        })
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// `true` when there are no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Values per image, `C * H * W`.
    pub fn image_len(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// The shape of a batch of `n` images: `(n, C, H, W)`.
    pub fn batch_shape(&self, n: usize) -> Vec<usize> {
        vec![n, self.channels, self.height, self.width]
    }

    /// Holds out `n` images (all but one at most), drawn at random by `seed` and
    /// stratified by class, as a validation set: returns `(rest, held out)`, each in the
    /// original order. For choosing epochs, rates and recipes without looking at the
    /// test set.
    ///
    /// Each class gives its share of `n` (`n * class size / len`), the fractions handed
    /// out to the classes with the largest remainders (ties to the lower class), so the
    /// held-out set has the class proportions of the whole.
    pub fn split(&self, n: usize, seed: u64) -> (Self, Self) {
        let n = n.min(self.len().saturating_sub(1));
        let members = self.members_by_class();
        let total = self.len().max(1);
        // whole shares first, then one more for the largest remainders
        let mut quota: Vec<usize> = members.iter().map(|m| m.len() * n / total).collect();
        let mut by_remainder: Vec<usize> = (0..members.len()).collect();
        by_remainder.sort_by_key(|&c| std::cmp::Reverse(members[c].len() * n % total));
        let short = n - quota.iter().sum::<usize>();
        for &c in by_remainder.iter().take(short) {
            quota[c] += 1;
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut held = vec![false; self.len()];
        for (m, &q) in members.iter().zip(&quota) {
            for &i in m.choose_multiple(&mut rng, q) {
                held[i] = true;
            }
        }
        self.partition(&held)
    }

    /// The indices of each class's images, in order.
    fn members_by_class(&self) -> Vec<Vec<usize>> {
        let mut members = vec![Vec::new(); self.classes];
        for (i, &l) in self.labels.iter().enumerate() {
            members[usize::from(l)].push(i);
        }
        members
    }

    /// `(images not marked, images marked)`, each in the original order.
    fn partition(&self, marked: &[bool]) -> (Self, Self) {
        let len = self.image_len();
        let (mut a, mut b) = (self.clone_meta(), self.clone_meta());
        for (i, &m) in marked.iter().enumerate() {
            let part = if m { &mut b } else { &mut a };
            part.images.extend_from_slice(&self.images[i * len..(i + 1) * len]);
            part.labels.push(self.labels[i]);
        }
        (a, b)
    }

    /// The images of the classes `classes` only, in their order, relabelled by their
    /// position in `classes` (`[5, 6, 7, 8, 9]` makes a 5-class set whose digit 5 is
    /// class 0): the split tasks of transfer learning. The classes must be distinct and
    /// below [`ImageSet::classes`].
    pub fn select_classes(&self, classes: &[u8]) -> Result<Self, DataError> {
        let bad = |reason: String| DataError::Classes {
            classes: classes.to_vec(),
            reason,
        };
        if classes.is_empty() {
            return Err(bad("no class chosen".into()));
        }
        if let Some(c) = classes.iter().find(|&&c| usize::from(c) >= self.classes) {
            return Err(bad(format!("class {c} is not below the set's {}", self.classes)));
        }
        let mut position = [None; 256];
        for (i, &c) in classes.iter().enumerate() {
            if position[usize::from(c)].replace(i as u8).is_some() {
                return Err(bad(format!("class {c} is chosen twice")));
            }
        }
        let len = self.image_len();
        let mut out = Self {
            classes: classes.len(),
            ..self.clone_meta()
        };
        for (i, &label) in self.labels.iter().enumerate() {
            if let Some(new) = position[usize::from(label)] {
                out.images.extend_from_slice(&self.images[i * len..(i + 1) * len]);
                out.labels.push(new);
            }
        }
        Ok(out)
    }

    /// At most `k` images of each class, drawn at random by `seed`, in their original
    /// order: few labels, as when fine-tuning on a new task.
    pub fn per_class(&self, k: usize, seed: u64) -> Self {
        self.per_class_split(k, seed).0
    }

    /// [`ImageSet::per_class`] and the images it leaves: `(chosen, rest)`, each in the
    /// original order. The rest is the evaluation set of a data set with no test set of
    /// its own (the optical digits).
    pub fn per_class_split(&self, k: usize, seed: u64) -> (Self, Self) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut left = vec![true; self.len()];
        for of_class in self.members_by_class() {
            for &j in of_class.choose_multiple(&mut rng, k.min(of_class.len())) {
                left[j] = false;
            }
        }
        self.partition(&left)
    }

    /// The first `n` images (all of them if `n` is larger).
    pub fn take(&self, n: usize) -> Self {
        let n = n.min(self.len());
        Self {
            images: self.images[..n * self.image_len()].to_vec(),
            labels: self.labels[..n].to_vec(),
            ..self.clone_meta()
        }
    }

    fn clone_meta(&self) -> Self {
        Self {
            images: Vec::new(),
            labels: Vec::new(),
            channels: self.channels,
            height: self.height,
            width: self.width,
            classes: self.classes,
        }
    }

    /// Writes the images at `indices`, scaled to `[0, 1]`, into `out` as
    /// `(B, C, H, W)` values (resizing it), and their labels into `labels`.
    ///
    /// # Panics
    /// If an index is out of range (a programmer error: indices come from
    /// [`BatchOrder`]).
    pub fn fill_batch(&self, indices: &[usize], out: &mut Vec<f32>, labels: &mut Vec<usize>) {
        let len = self.image_len();
        out.clear();
        labels.clear();
        for &i in indices {
            out.extend(
                self.images[i * len..(i + 1) * len]
                    .iter()
                    .map(|&p| f32::from(p) / 255.0),
            );
            labels.push(self.labels[i] as usize);
        }
    }

    /// The images at `indices` as a `(B, C, H, W)` tensor in `[0, 1]` and their labels.
    pub fn batch(&self, indices: &[usize]) -> (ArrayD<f32>, Vec<usize>) {
        let (mut x, mut t) = (Vec::new(), Vec::new());
        self.fill_batch(indices, &mut x, &mut t);
        let x = ArrayD::from_shape_vec(self.batch_shape(indices.len()), x).expect("batch shape");
        (x, t)
    }

    /// The whole set as `f32`: `(N, C*H*W)` when `flatten`, else `(N, C, H, W)`; scaled to
    /// `[0, 1]` when `normalize`.
    pub fn to_f32(&self, normalize: bool, flatten: bool) -> ArrayD<f32> {
        let scale = if normalize { 1.0 / 255.0 } else { 1.0 };
        let data: Vec<f32> = self.images.iter().map(|&p| f32::from(p) * scale).collect();
        let shape = if flatten {
            vec![self.len(), self.image_len()]
        } else {
            self.batch_shape(self.len())
        };
        ArrayD::from_shape_vec(shape, data).expect("shape")
    }

    /// One-hot labels `(N, classes)`.
    pub fn one_hot(&self) -> Array2<f32> {
        let mut t = Array2::zeros((self.len(), self.classes));
        for (i, &l) in self.labels.iter().enumerate() {
            t[[i, l as usize]] = 1.0;
        }
        t
    }
}

/// The order of mini-batches: each epoch a fresh permutation of `0..n` from a ChaCha8
/// generator seeded by `seed` on stream `epoch`, cut into batches of `batch_size` (the
/// last one shorter unless `drop_last`). The same seed gives the same batches on every
/// machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchOrder {
    n: usize,
    batch_size: usize,
    seed: u64,
    drop_last: bool,
}

impl BatchOrder {
    /// Batches of `batch_size` over `n` samples.
    ///
    /// # Panics
    /// If `batch_size` is 0.
    pub fn new(n: usize, batch_size: usize, seed: u64) -> Self {
        assert!(batch_size > 0, "BatchOrder: batch size must be at least 1");
        Self {
            n,
            batch_size,
            seed,
            drop_last: false,
        }
    }

    /// Leaves out the last, shorter batch of each epoch.
    pub fn drop_last(mut self, yes: bool) -> Self {
        self.drop_last = yes;
        self
    }

    /// Batches per epoch.
    pub fn batches_per_epoch(&self) -> usize {
        if self.drop_last {
            self.n / self.batch_size
        } else {
            self.n.div_ceil(self.batch_size)
        }
    }

    /// The batches of epoch `epoch` (0-based).
    pub fn epoch(&self, epoch: u64) -> impl Iterator<Item = Vec<usize>> {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        rng.set_stream(epoch);
        let mut perm: Vec<usize> = (0..self.n).collect();
        perm.shuffle(&mut rng);
        let count = self.batches_per_epoch();
        let bs = self.batch_size;
        (0..count).map(move |b| perm[b * bs..((b + 1) * bs).min(perm.len())].to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 20 two-pixel images: image i is `[i, 100 + i]`, its label i % 4 (4 classes).
    fn set() -> ImageSet {
        let images: Vec<u8> = (0..20).flat_map(|i| [i, 100 + i]).collect();
        let labels: Vec<u8> = (0..20).map(|i| i % 4).collect();
        ImageSet::new(images, labels, 1, 2, 4).unwrap()
    }

    /// The first pixel of every image.
    fn ids(s: &ImageSet) -> Vec<u8> {
        s.images
            .chunks(2)
            .map(|p| {
                assert_eq!(p[1], 100 + p[0], "the image's pixels stay together");
                p[0]
            })
            .collect()
    }

    #[test]
    fn select_classes_keeps_those_classes_relabelled_in_order() {
        let s = set().select_classes(&[3, 1]).unwrap();
        assert_eq!(s.classes, 2);
        assert_eq!(ids(&s), [1, 3, 5, 7, 9, 11, 13, 15, 17, 19]);
        assert_eq!(s.labels, [1, 0, 1, 0, 1, 0, 1, 0, 1, 0], "3 is class 0, 1 is class 1");
        for (bad, says) in [
            (&[][..], "no class"),
            (&[4][..], "not below"),
            (&[2, 0, 2][..], "twice"),
        ] {
            let err = set().select_classes(bad).unwrap_err();
            assert!(
                matches!(err, DataError::Classes { .. }) && err.to_string().contains(says),
                "{err}"
            );
        }
    }

    #[test]
    fn per_class_draws_k_of_each_class_by_seed() {
        let s = set().per_class(2, 7);
        assert_eq!(s.len(), 8);
        for class in 0..4u8 {
            assert_eq!(s.labels.iter().filter(|&&l| l == class).count(), 2);
        }
        // each image keeps its label, in the original order
        let kept = ids(&s);
        assert!(kept.windows(2).all(|w| w[0] < w[1]));
        assert!(kept.iter().zip(&s.labels).all(|(&i, &l)| i % 4 == l));
        assert_eq!(s.images, set().per_class(2, 7).images, "the seed fixes the draw");
        let others: Vec<Vec<u8>> = (0..8).map(|seed| set().per_class(2, seed).images).collect();
        assert!(others.iter().any(|o| *o != s.images), "another seed, another draw");
        // more than a class holds: all of it
        assert_eq!(set().per_class(9, 0).images, set().images);
        assert!(set().per_class(0, 0).is_empty());
        // the rest is every other image, in order
        let (chosen, rest) = set().per_class_split(2, 7);
        assert_eq!(chosen, s);
        let mut all = [ids(&chosen), ids(&rest)].concat();
        assert!(ids(&rest).windows(2).all(|w| w[0] < w[1]));
        assert!(ids(&rest).iter().zip(&rest.labels).all(|(&i, &l)| i % 4 == l));
        all.sort_unstable();
        assert_eq!(all, ids(&set()));
    }
}
