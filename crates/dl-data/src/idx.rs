use std::io::Read;
use std::path::Path;

use crate::DataError;

/// An IDX array of unsigned bytes: its dimensions and its data in row-major order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxArray {
    /// Dimensions from the header, e.g. `[60000, 28, 28]`.
    pub dims: Vec<usize>,
    /// `dims.product()` bytes.
    pub data: Vec<u8>,
}

/// The most bytes a gzip file may decompress to (1 GiB; MNIST's largest file is 47 MB):
/// a small hostile file cannot make a reader allocate more.
pub const MAX_DECOMPRESSED: u64 = 1 << 30;

/// Reads a whole file, decompressing it when it starts with the gzip magic bytes
/// (whatever its name).
pub fn read_maybe_gzip(path: &Path) -> Result<Vec<u8>, DataError> {
    let raw = std::fs::read(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    decompress_maybe_gzip(&raw, path)
}

/// `raw` decompressed when it starts with the gzip magic bytes, else as it is; `name`
/// is used in errors. Refuses to decompress beyond [`MAX_DECOMPRESSED`] bytes.
pub fn decompress_maybe_gzip(raw: &[u8], name: impl AsRef<Path>) -> Result<Vec<u8>, DataError> {
    decompress_at_most(raw, name, MAX_DECOMPRESSED)
}

/// [`decompress_maybe_gzip`] with a cap of `limit` bytes on the decompressed output.
pub fn decompress_at_most(raw: &[u8], name: impl AsRef<Path>, limit: u64) -> Result<Vec<u8>, DataError> {
    let gzip_error = |source| DataError::Gzip {
        path: name.as_ref().to_path_buf(),
        source,
    };
    if !raw.starts_with(&[0x1f, 0x8b]) {
        return Ok(raw.to_vec());
    }
    let mut out = Vec::with_capacity(raw.len().saturating_mul(4));
    flate2::read::MultiGzDecoder::new(raw)
        .take(limit.saturating_add(1))
        .read_to_end(&mut out)
        .map_err(gzip_error)?;
    if out.len() as u64 > limit {
        return Err(gzip_error(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("decompresses to more than {limit} bytes"),
        )));
    }
    Ok(out)
}

/// Reads and validates an IDX file of unsigned bytes, raw or gzip.
pub fn read_idx(path: &Path) -> Result<IdxArray, DataError> {
    parse_idx(&read_maybe_gzip(path)?, path)
}

/// Parses IDX bytes: magic `00 00`, element type `0x08`, 1 to 4 dimensions (big-endian
/// `u32`), then exactly as many data bytes as the dimensions multiply to. `name` is
/// used in errors.
pub fn parse_idx(bytes: &[u8], name: impl AsRef<Path>) -> Result<IdxArray, DataError> {
    let path = name.as_ref().to_path_buf();
    let not_idx = |reason: String| DataError::NotIdx {
        path: path.clone(),
        reason,
    };
    if bytes.len() < 4 {
        return Err(not_idx(format!(
            "only {} bytes, a header needs at least 4",
            bytes.len()
        )));
    }
    if bytes[0] != 0 || bytes[1] != 0 {
        return Err(not_idx(format!(
            "magic number starts {:02x} {:02x}, expected 00 00",
            bytes[0], bytes[1]
        )));
    }
    let code = bytes[2];
    if !matches!(code, 0x08 | 0x09 | 0x0B | 0x0C | 0x0D | 0x0E) {
        return Err(not_idx(format!("unknown element type 0x{code:02x}")));
    }
    if code != 0x08 {
        return Err(DataError::UnsupportedType { path, code });
    }
    let ndim = bytes[3] as usize;
    if !(1..=4).contains(&ndim) {
        return Err(not_idx(format!("{ndim} dimensions; expected 1 to 4")));
    }
    let header = 4 + 4 * ndim;
    if bytes.len() < header {
        return Err(not_idx(format!(
            "the header of {ndim} dimensions needs {header} bytes, the file has {}",
            bytes.len()
        )));
    }
    let dims: Vec<usize> = bytes[4..header]
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    let expected = dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
        .ok_or_else(|| not_idx(format!("dimensions {dims:?} overflow")))?;
    let actual = (bytes.len() - header) as u64;
    if actual != expected {
        return Err(DataError::Length { path, expected, actual });
    }
    Ok(IdxArray {
        dims,
        data: bytes[header..].to_vec(),
    })
}

/// The IDX bytes of unsigned-byte data with dimensions `dims` (1 to 4 of them, each
/// below 2^32, multiplying to `data.len()`): the inverse of [`parse_idx`]. `None` when
/// the dimensions cannot describe `data`.
pub fn encode_idx(dims: &[usize], data: &[u8]) -> Option<Vec<u8>> {
    if !(1..=4).contains(&dims.len()) || dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d)) != Some(data.len()) {
        return None;
    }
    let mut out = vec![0, 0, 0x08, dims.len() as u8];
    for &d in dims {
        out.extend_from_slice(&u32::try_from(d).ok()?.to_be_bytes());
    }
    out.extend_from_slice(data);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(code: u8, dims: &[u32]) -> Vec<u8> {
        let mut v = vec![0, 0, code, dims.len() as u8];
        for d in dims {
            v.extend_from_slice(&d.to_be_bytes());
        }
        v
    }

    #[test]
    fn parses_a_valid_file() {
        let mut b = header(8, &[2, 2, 3]);
        b.extend(0..12u8);
        let a = parse_idx(&b, "x").unwrap();
        assert_eq!(a.dims, vec![2, 2, 3]);
        assert_eq!(a.data, (0..12).collect::<Vec<u8>>());
    }

    #[test]
    fn encoding_is_the_inverse_of_parsing_and_refuses_what_idx_cannot_say() {
        let data: Vec<u8> = (0..24).collect();
        let bytes = encode_idx(&[2, 3, 4], &data).unwrap();
        assert_eq!(bytes[..8], [0, 0, 8, 3, 0, 0, 0, 2]);
        let back = parse_idx(&bytes, "x").unwrap();
        assert_eq!((back.dims, back.data), (vec![2, 3, 4], data.clone()));
        assert_eq!(encode_idx(&[5], &data), None, "dimensions that do not fit the data");
        assert_eq!(encode_idx(&[], &[]), None, "no dimension");
        assert_eq!(encode_idx(&[1, 1, 1, 1, 24], &data), None, "five dimensions");
        assert!(encode_idx(&[1, 1, 1, 24], &data).is_some(), "four are allowed");
        assert_eq!(encode_idx(&[1 << 32, 0], &[]), None, "a dimension beyond u32");
    }

    #[test]
    fn rejects_each_kind_of_bad_file_with_a_typed_error() {
        // too short for any header
        assert!(matches!(parse_idx(&[0, 0], "f"), Err(DataError::NotIdx { .. })));
        // wrong magic
        let e = parse_idx(&[1, 2, 8, 1, 0, 0, 0, 0], "f").unwrap_err();
        assert!(e.to_string().contains("magic number"), "{e}");
        // unknown type
        assert!(matches!(
            parse_idx(&header(0x42, &[1]), "f"),
            Err(DataError::NotIdx { .. })
        ));
        // valid but unsupported type (float)
        assert!(matches!(
            parse_idx(&header(0x0D, &[1]), "f"),
            Err(DataError::UnsupportedType { code: 0x0D, .. })
        ));
        // zero or too many dimensions
        assert!(parse_idx(&header(8, &[]), "f").is_err());
        assert!(parse_idx(&header(8, &[1, 1, 1, 1, 1]), "f").is_err());
        // header cut inside the dimensions
        let mut b = header(8, &[5, 5]);
        b.truncate(9);
        assert!(matches!(parse_idx(&b, "f"), Err(DataError::NotIdx { .. })));
        // truncated body
        let mut b = header(8, &[2, 3]);
        b.extend([1u8; 5]);
        let e = parse_idx(&b, "train.idx").unwrap_err();
        assert!(matches!(
            e,
            DataError::Length {
                expected: 6,
                actual: 5,
                ..
            }
        ));
        assert!(
            e.to_string().contains("train.idx") && e.to_string().contains("truncated"),
            "{e}"
        );
        // trailing garbage
        let mut b = header(8, &[2]);
        b.extend([1u8; 3]);
        assert!(parse_idx(&b, "f").unwrap_err().to_string().contains("trailing"));
    }

    #[test]
    fn reads_raw_and_gzip_files_alike_and_reports_corrupt_gzip() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let mut b = header(8, &[4]);
        b.extend([9u8, 8, 7, 6]);
        let raw = dir.path().join("a.idx");
        std::fs::write(&raw, &b).unwrap();
        let gz = dir.path().join("a.idx.gz");
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(&b).unwrap();
        let packed = enc.finish().unwrap();
        std::fs::write(&gz, &packed).unwrap();
        assert_eq!(read_idx(&raw).unwrap(), read_idx(&gz).unwrap());
        // a gzip stream cut in half
        let cut = dir.path().join("cut.gz");
        std::fs::write(&cut, &packed[..packed.len() / 2]).unwrap();
        let e = read_idx(&cut).unwrap_err();
        assert!(matches!(e, DataError::Gzip { .. }), "{e}");
        // a missing file
        assert!(matches!(read_idx(&dir.path().join("nope")), Err(DataError::Io { .. })));
        // the cap on the decompressed size: exactly the limit passes, one byte more not
        let limit = b.len() as u64;
        assert_eq!(decompress_at_most(&packed, "a", limit).unwrap(), b);
        let e = decompress_at_most(&packed, "a", limit - 1).unwrap_err();
        assert!(
            matches!(e, DataError::Gzip { .. }) && e.to_string().contains("more than 11 bytes"),
            "{e}"
        );
        // raw bytes are not capped: they are already in memory
        assert_eq!(decompress_at_most(&b, "a", 0).unwrap(), b);
    }
}
