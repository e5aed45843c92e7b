//! Reading the book's own parameter files (`deep_convnet_params.pkl`, written by
//! `DeepConvNet.save_params`), without running a Python unpickler.
//!
//! A pickle is a program for a small stack machine, and a general unpickler will call any
//! Python function the file names: loading an untrusted pickle can run code. This reader
//! implements only the few instructions that a `dict` of NumPy arrays needs, and accepts
//! exactly three global names, `numpy.core.multiarray._reconstruct` (or
//! `numpy._core.multiarray._reconstruct`), `numpy.ndarray` and `numpy.dtype`, which it
//! does not call either: it reads what they would have been given. Anything else is a
//! [`PickleError`]. Arrays of little-endian `float32`/`float64` in C order are read (the
//! book's float64 weights become `f32`, as the network computes in `f32`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// A NumPy array read from a pickle, as `f32` in row-major order.
#[derive(Debug, Clone, PartialEq)]
pub struct PickledArray {
    /// The array's shape.
    pub shape: Vec<usize>,
    /// The values, row-major, converted to `f32`.
    pub data: Vec<f32>,
}

/// Why a pickle was refused.
#[derive(Debug, thiserror::Error)]
pub enum PickleError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is not a pickle this reader accepts; nothing in it was run.
    #[error("{path}: at byte {offset}: {message}")]
    Refused {
        /// The file.
        path: PathBuf,
        /// Where in the file.
        offset: usize,
        /// What was found.
        message: String,
    },
}

#[derive(Debug, Clone, PartialEq)]
enum Value {
    Mark,
    None,
    Bool(bool),
    Int(i64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    /// One of the allowed globals.
    Global(AllowedGlobal),
    /// `_reconstruct(ndarray, (0,), b'b')` before its state arrives.
    EmptyArray,
    /// `dtype(code, False, True)`, then its state (byte order).
    Dtype {
        code: String,
        little_endian: bool,
    },
    Array(PickledArray),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AllowedGlobal {
    Reconstruct,
    NdArray,
    Dtype,
}

/// Reads the `dict` of arrays in the pickle at `path` (name -> array).
pub fn read_pickled_arrays(path: impl AsRef<Path>) -> Result<Vec<(String, PickledArray)>, PickleError> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|source| PickleError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_pickled_arrays(&bytes, path)
}

/// [`read_pickled_arrays`] on bytes in memory; `path` only names the source in errors.
pub fn parse_pickled_arrays(bytes: &[u8], path: &Path) -> Result<Vec<(String, PickledArray)>, PickleError> {
    Machine {
        bytes,
        pos: 0,
        path,
        stack: Vec::new(),
        memo: HashMap::new(),
    }
    .run()
}

struct Machine<'a> {
    bytes: &'a [u8],
    pos: usize,
    path: &'a Path,
    stack: Vec<Value>,
    memo: HashMap<u32, Value>,
}

/// Arrays larger than this many elements are refused (the book's largest has 51,200).
const MAX_ELEMENTS: usize = 1 << 28;

impl Machine<'_> {
    fn refuse<T>(&self, message: impl Into<String>) -> Result<T, PickleError> {
        Err(PickleError::Refused {
            path: self.path.to_path_buf(),
            offset: self.pos,
            message: message.into(),
        })
    }

    fn take(&mut self, n: usize) -> Result<&[u8], PickleError> {
        if self.bytes.len() - self.pos < n {
            return self.refuse(format!("the file ends inside an instruction (wanted {n} more bytes)"));
        }
        let s = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, PickleError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, PickleError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, PickleError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, PickleError> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }

    fn string(&mut self, n: usize) -> Result<String, PickleError> {
        let b = self.take(n)?.to_vec();
        match String::from_utf8(b) {
            Ok(s) => Ok(s),
            Err(_) => self.refuse("a string is not UTF-8"),
        }
    }

    fn pop(&mut self) -> Result<Value, PickleError> {
        match self.stack.pop() {
            Some(Value::Mark) | None => self.refuse("the stack is empty"),
            Some(v) => Ok(v),
        }
    }

    /// The values above the topmost mark, which is removed.
    fn pop_to_mark(&mut self) -> Result<Vec<Value>, PickleError> {
        match self.stack.iter().rposition(|v| *v == Value::Mark) {
            Some(i) => {
                let items = self.stack.split_off(i + 1);
                self.stack.pop();
                Ok(items)
            }
            None => self.refuse("no mark on the stack"),
        }
    }

    fn run(mut self) -> Result<Vec<(String, PickledArray)>, PickleError> {
        loop {
            let op = self.u8()?;
            match op {
                0x80 => {
                    // PROTO
                    let v = self.u8()?;
                    if !(2..=5).contains(&v) {
                        return self.refuse(format!("pickle protocol {v} is not read"));
                    }
                }
                0x95 => {
                    // FRAME: a length hint only
                    self.u64()?;
                }
                b'}' => self.stack.push(Value::Dict(Vec::new())),
                b'(' => self.stack.push(Value::Mark),
                b')' => self.stack.push(Value::Tuple(Vec::new())),
                0x94 => {
                    // MEMOIZE
                    let v = match self.stack.last() {
                        Some(v) if *v != Value::Mark => v.clone(),
                        _ => return self.refuse("nothing to memoize"),
                    };
                    let k = self.memo.len() as u32;
                    self.memo.insert(k, v);
                }
                b'q' | b'r' => {
                    // BINPUT, LONG_BINPUT
                    let k = if op == b'q' { u32::from(self.u8()?) } else { self.u32()? };
                    let v = match self.stack.last() {
                        Some(v) if *v != Value::Mark => v.clone(),
                        _ => return self.refuse("nothing to memoize"),
                    };
                    self.memo.insert(k, v);
                }
                b'h' | b'j' => {
                    // BINGET, LONG_BINGET
                    let k = if op == b'h' { u32::from(self.u8()?) } else { self.u32()? };
                    match self.memo.get(&k) {
                        Some(v) => self.stack.push(v.clone()),
                        None => return self.refuse(format!("memo entry {k} is not set")),
                    }
                }
                0x8c => {
                    // SHORT_BINUNICODE
                    let n = usize::from(self.u8()?);
                    let s = self.string(n)?;
                    self.stack.push(Value::Str(s));
                }
                b'X' => {
                    // BINUNICODE
                    let n = self.u32()? as usize;
                    let s = self.string(n)?;
                    self.stack.push(Value::Str(s));
                }
                b'C' | b'B' | 0x8e => {
                    // SHORT_BINBYTES, BINBYTES, BINBYTES8
                    let n = match op {
                        b'C' => usize::from(self.u8()?),
                        b'B' => self.u32()? as usize,
                        _ => match usize::try_from(self.u64()?) {
                            Ok(n) => n,
                            Err(_) => return self.refuse("a byte string longer than memory"),
                        },
                    };
                    let b = self.take(n)?.to_vec();
                    self.stack.push(Value::Bytes(b));
                }
                b'K' => {
                    let v = self.u8()?;
                    self.stack.push(Value::Int(i64::from(v)));
                }
                b'M' => {
                    let v = self.u16()?;
                    self.stack.push(Value::Int(i64::from(v)));
                }
                b'J' => {
                    let v = self.u32()? as i32;
                    self.stack.push(Value::Int(i64::from(v)));
                }
                b'N' => self.stack.push(Value::None),
                0x88 => self.stack.push(Value::Bool(true)),
                0x89 => self.stack.push(Value::Bool(false)),
                0x85..=0x87 => {
                    // TUPLE1..3
                    let n = usize::from(op - 0x84);
                    if self.stack.len() < n {
                        return self.refuse("the stack is empty");
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    if items.contains(&Value::Mark) {
                        return self.refuse("a mark inside a tuple");
                    }
                    self.stack.push(Value::Tuple(items));
                }
                b't' => {
                    let items = self.pop_to_mark()?;
                    self.stack.push(Value::Tuple(items));
                }
                b'c' | 0x93 => {
                    // GLOBAL, STACK_GLOBAL
                    let (module, name) = if op == b'c' {
                        let module = self.line()?;
                        let name = self.line()?;
                        (module, name)
                    } else {
                        let name = self.pop()?;
                        let module = self.pop()?;
                        match (module, name) {
                            (Value::Str(m), Value::Str(n)) => (m, n),
                            _ => return self.refuse("STACK_GLOBAL needs two strings"),
                        }
                    };
                    let g = match (module.as_str(), name.as_str()) {
                        ("numpy.core.multiarray" | "numpy._core.multiarray", "_reconstruct") => {
                            AllowedGlobal::Reconstruct
                        }
                        ("numpy", "ndarray") => AllowedGlobal::NdArray,
                        ("numpy", "dtype") => AllowedGlobal::Dtype,
                        _ => {
                            return self.refuse(format!(
                                "refusing the global {module}.{name}: only NumPy array reconstruction is read"
                            ))
                        }
                    };
                    self.stack.push(Value::Global(g));
                }
                b'R' => {
                    let args = self.pop()?;
                    let f = self.pop()?;
                    let v = self.reduce(f, args)?;
                    self.stack.push(v);
                }
                b'b' => {
                    let state = self.pop()?;
                    let obj = self.pop()?;
                    let v = self.build(obj, state)?;
                    self.stack.push(v);
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    match self.stack.last_mut() {
                        Some(Value::Dict(d)) => d.push((k, v)),
                        _ => return self.refuse("SETITEM without a dict"),
                    }
                }
                b'u' => {
                    let items = self.pop_to_mark()?;
                    if items.len() % 2 != 0 {
                        return self.refuse("SETITEMS with an odd number of values");
                    }
                    let mut it = items.into_iter();
                    let mut pairs = Vec::new();
                    while let (Some(k), Some(v)) = (it.next(), it.next()) {
                        pairs.push((k, v));
                    }
                    match self.stack.last_mut() {
                        Some(Value::Dict(d)) => d.extend(pairs),
                        _ => return self.refuse("SETITEMS without a dict"),
                    }
                }
                b'.' => return self.finish(),
                other => {
                    self.pos -= 1;
                    return self.refuse(format!("pickle instruction 0x{other:02x} is not accepted"));
                }
            }
        }
    }

    /// A newline-terminated ASCII argument (GLOBAL's module and name).
    fn line(&mut self) -> Result<String, PickleError> {
        let rest = &self.bytes[self.pos..];
        match rest.iter().position(|&b| b == b'\n') {
            Some(n) => {
                let s = self.string(n)?;
                self.pos += 1;
                Ok(s)
            }
            None => self.refuse("the file ends inside an instruction"),
        }
    }

    fn reduce(&self, f: Value, args: Value) -> Result<Value, PickleError> {
        let Value::Tuple(args) = args else {
            return self.refuse("REDUCE arguments are not a tuple");
        };
        match f {
            Value::Global(AllowedGlobal::Reconstruct) => match args.as_slice() {
                [Value::Global(AllowedGlobal::NdArray), Value::Tuple(_), Value::Bytes(_)] => Ok(Value::EmptyArray),
                _ => self.refuse("_reconstruct with unexpected arguments"),
            },
            Value::Global(AllowedGlobal::Dtype) => match args.as_slice() {
                [Value::Str(code), ..] => Ok(Value::Dtype {
                    code: code.clone(),
                    little_endian: true,
                }),
                _ => self.refuse("dtype with unexpected arguments"),
            },
            _ => self.refuse("REDUCE of something that is not an allowed NumPy constructor"),
        }
    }

    fn build(&self, obj: Value, state: Value) -> Result<Value, PickleError> {
        let Value::Tuple(state) = state else {
            return self.refuse("BUILD state is not a tuple");
        };
        match obj {
            Value::Dtype { code, .. } => {
                // (version, byte order, subarray, names, fields, elsize, alignment, flags)
                let order = match state.get(1) {
                    Some(Value::Str(o)) => o.clone(),
                    _ => return self.refuse("dtype state without a byte order"),
                };
                if order == ">" {
                    return self.refuse("big-endian arrays are not read");
                }
                Ok(Value::Dtype {
                    code,
                    little_endian: true,
                })
            }
            Value::EmptyArray => {
                // (version, shape, dtype, Fortran order, raw bytes)
                let [Value::Int(_), Value::Tuple(shape), Value::Dtype { code, little_endian }, Value::Bool(fortran), Value::Bytes(raw)] =
                    state.as_slice()
                else {
                    return self.refuse("an array state this reader does not know");
                };
                if *fortran {
                    return self.refuse("Fortran-order arrays are not read");
                }
                debug_assert!(*little_endian);
                let mut dims = Vec::with_capacity(shape.len());
                for d in shape {
                    match d {
                        Value::Int(n) if *n >= 0 => dims.push(*n as usize),
                        _ => return self.refuse("an array dimension is not a non-negative integer"),
                    }
                }
                let count = dims
                    .iter()
                    .try_fold(1usize, |a, &d| a.checked_mul(d))
                    .filter(|&c| c <= MAX_ELEMENTS);
                let Some(count) = count else {
                    return self.refuse(format!("an array of shape {dims:?} is too large"));
                };
                let width = match code.as_str() {
                    "f8" => 8,
                    "f4" => 4,
                    other => {
                        return self.refuse(format!("arrays of dtype {other:?} are not read (float32/float64 only)"))
                    }
                };
                if raw.len() != count * width {
                    return self.refuse(format!(
                        "an array of shape {dims:?} ({code}) needs {} bytes, the file holds {}",
                        count * width,
                        raw.len()
                    ));
                }
                let data = if width == 8 {
                    raw.chunks_exact(8)
                        .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32)
                        .collect()
                } else {
                    raw.chunks_exact(4)
                        .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
                        .collect()
                };
                Ok(Value::Array(PickledArray { shape: dims, data }))
            }
            _ => self.refuse("BUILD of something that is not a NumPy array or dtype"),
        }
    }

    fn finish(mut self) -> Result<Vec<(String, PickledArray)>, PickleError> {
        let top = self.pop()?;
        let Value::Dict(items) = top else {
            return self.refuse("the pickle does not hold a dict");
        };
        let mut out = Vec::with_capacity(items.len());
        for (k, v) in items {
            match (k, v) {
                (Value::Str(k), Value::Array(a)) => out.push((k, a)),
                _ => return self.refuse("the dict maps something other than names to arrays"),
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A protocol-4 pickle of `{name: array}` as NumPy writes it, built by hand.
    fn pickle_of(arrays: &[(&str, &[usize], &[f64])], code: &str) -> Vec<u8> {
        let mut p = vec![0x80, 4, b'}', 0x94, b'('];
        let s = |p: &mut Vec<u8>, t: &str| {
            p.push(0x8c);
            p.push(t.len() as u8);
            p.extend_from_slice(t.as_bytes());
        };
        for (name, shape, data) in arrays {
            s(&mut p, name);
            s(&mut p, "numpy.core.multiarray");
            s(&mut p, "_reconstruct");
            p.push(0x93);
            s(&mut p, "numpy");
            s(&mut p, "ndarray");
            p.push(0x93);
            p.extend_from_slice(&[b'K', 0, 0x85, b'C', 1, b'b', 0x87, b'R']);
            p.extend_from_slice(&[b'(', b'K', 1, b'(']);
            for &d in *shape {
                p.push(b'M');
                p.extend_from_slice(&(d as u16).to_le_bytes());
            }
            p.push(b't');
            s(&mut p, "numpy");
            s(&mut p, "dtype");
            p.push(0x93);
            s(&mut p, code);
            p.extend_from_slice(&[0x89, 0x88, 0x87, b'R', b'(', b'K', 3]);
            s(&mut p, "<");
            p.extend_from_slice(b"NNNJ");
            p.extend_from_slice(&(-1i32).to_le_bytes());
            p.push(b'J');
            p.extend_from_slice(&(-1i32).to_le_bytes());
            p.extend_from_slice(&[b'K', 0, b't', b'b', 0x89]);
            let raw: Vec<u8> = if code == "f8" {
                data.iter().flat_map(|v| v.to_le_bytes()).collect()
            } else {
                data.iter().flat_map(|v| (*v as f32).to_le_bytes()).collect()
            };
            p.push(b'B');
            p.extend_from_slice(&(raw.len() as u32).to_le_bytes());
            p.extend_from_slice(&raw);
            p.extend_from_slice(b"tb");
        }
        p.extend_from_slice(b"u.");
        p
    }

    #[test]
    fn a_network_loads_the_books_pickle_and_refuses_wrong_shapes() {
        use crate::{DeepConvNet, DeepConvNetConfig};
        let source = DeepConvNet::new(DeepConvNetConfig::default(), 3);
        let owned: Vec<(String, Vec<usize>, Vec<f64>)> = source
            .params()
            .into_iter()
            .map(|(n, t)| (n, t.shape().to_vec(), t.iter().map(|v| f64::from(*v)).collect()))
            .collect();
        let refs: Vec<(&str, &[usize], &[f64])> = owned
            .iter()
            .map(|(n, s, d)| (n.as_str(), s.as_slice(), d.as_slice()))
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("deep_convnet_params.pkl");
        std::fs::write(&path, pickle_of(&refs, "f8")).unwrap();
        let mut net = DeepConvNet::new(DeepConvNetConfig::default(), 4).into_network();
        net.load_book_params(&path).unwrap();
        for ((n1, a), (n2, b)) in net.params().into_iter().zip(source.params()) {
            assert_eq!((n1, a), (n2, b));
        }
        // W7 of the wrong shape: a typed error, and the network keeps its parameters
        let mut bad = refs.clone();
        let w7 = owned.iter().position(|(n, ..)| n == "W7").unwrap();
        bad[w7] = ("W7", &[50, 1024], &owned[w7].2);
        std::fs::write(&path, pickle_of(&bad, "f8")).unwrap();
        let mut other = DeepConvNet::new(DeepConvNetConfig::default(), 5).into_network();
        let before = other.params_to_bytes();
        let err = other.load_book_params(&path).unwrap_err();
        assert!(matches!(err, crate::ModelError::Shape { .. }), "{err}");
        assert_eq!(other.params_to_bytes(), before);
    }

    fn parse(bytes: &[u8]) -> Result<Vec<(String, PickledArray)>, PickleError> {
        parse_pickled_arrays(bytes, Path::new("test.pkl"))
    }

    #[test]
    fn reads_a_dict_of_float64_and_float32_arrays() {
        let data: Vec<f64> = (0..24).map(|i| i as f64 * 0.25 - 3.0).collect();
        for code in ["f8", "f4"] {
            let got = parse(&pickle_of(
                &[("W1", &[2, 3, 4], &data), ("b1", &[2], &[1.5, -2.0])],
                code,
            ))
            .unwrap();
            assert_eq!(got.len(), 2);
            assert_eq!(got[0].0, "W1");
            assert_eq!(got[0].1.shape, vec![2, 3, 4]);
            assert_eq!(got[0].1.data, data.iter().map(|v| *v as f32).collect::<Vec<_>>());
            assert_eq!(got[1].1.data, vec![1.5, -2.0]);
        }
    }

    #[test]
    fn memo_tuple_and_dict_instructions_do_what_the_protocol_says() {
        // BINPUT / BINGET (one-byte index), LONG_BINPUT / LONG_BINGET (four bytes) and
        // MEMOIZE (the next index) store the top value and push it back: an empty dict
        let memo_programs: [&[u8]; 3] = [
            b"\x80\x02}q\x00h\x00.",
            b"\x80\x02}r\x01\x00\x00\x00j\x01\x00\x00\x00.",
            b"\x80\x04}\x94h\x00.",
        ];
        for program in memo_programs {
            assert_eq!(parse(program).unwrap(), vec![], "{program:?}");
        }
        // each refusal, with the offset it names
        let cases: [(&[u8], &str); 11] = [
            (b"\x80\x04(\x94.", "at byte 4: nothing to memoize"),
            (b"\x80\x04(q\x00.", "at byte 5: nothing to memoize"),
            (b"\x80\x04(r\x00\x00\x00\x00.", "at byte 8: nothing to memoize"),
            (b"\x80\x02}h\x07.", "at byte 5: memo entry 7 is not set"),
            // TUPLE1 of the one value on the stack is a tuple, not a dict
            (b"\x80\x02K\x01\x85.", "at byte 6: the pickle does not hold a dict"),
            (b"\x80\x02K\x01\x86.", "at byte 5: the stack is empty"),
            (b"\x80\x02(\x85.", "at byte 4: a mark inside a tuple"),
            // SETITEM into a dict, which then maps a name to an integer
            (
                b"\x80\x02}\x8c\x01aK\x01s.",
                "the dict maps something other than names to arrays",
            ),
            (b"\x80\x02)\x8c\x01aK\x01s.", "at byte 9: SETITEM without a dict"),
            (
                b"\x80\x02}(\x8c\x01au.",
                "at byte 8: SETITEMS with an odd number of values",
            ),
            // an unknown instruction is reported where it starts
            (b"\x80\x02}G", "at byte 3: pickle instruction 0x47 is not accepted"),
        ];
        for (program, want) in cases {
            let e = parse(program).unwrap_err().to_string();
            assert!(e.contains(want), "{program:?}: {e}, want {want:?}");
        }
        // an array of shape (-1,): the dimension 3 (`M 3 0`) written as `J -1`
        let good = pickle_of(&[("W1", &[3], &[1.0, 2.0, 3.0])], "f8");
        let at = good.windows(4).position(|w| w == [b'M', 3, 0, b't']).unwrap();
        let mut negative = good[..at].to_vec();
        negative.extend_from_slice(&[b'J', 0xff, 0xff, 0xff, 0xff]);
        negative.extend_from_slice(&good[at + 3..]);
        let e = parse(&negative).unwrap_err().to_string();
        assert!(e.contains("an array dimension is not a non-negative integer"), "{e}");
    }

    #[test]
    fn refuses_code_execution_and_broken_files_without_panicking() {
        // the classic: GLOBAL os.system, then REDUCE
        let evil = b"\x80\x02cos\nsystem\nq\x00X\x04\x00\x00\x00echoq\x01\x85q\x02Rq\x03.";
        let e = parse(evil).unwrap_err().to_string();
        assert!(e.contains("refusing the global os.system"), "{e}");
        let good = pickle_of(&[("W1", &[2, 2], &[1.0, 2.0, 3.0, 4.0])], "f8");
        // every truncation is an error, never a panic
        for n in 0..good.len() {
            assert!(parse(&good[..n]).is_err(), "truncated at {n}");
        }
        // wrong byte count for the shape
        let short = pickle_of(&[("W1", &[2, 3], &[1.0, 2.0, 3.0, 4.0])], "f8");
        assert!(parse(&short).unwrap_err().to_string().contains("needs 48 bytes"));
        // an unknown dtype
        let ints = pickle_of(&[("W1", &[1], &[1.0])], "i8");
        assert!(parse(&ints).unwrap_err().to_string().contains("\"i8\""));
        // an unknown instruction
        let mut odd = good.clone();
        odd.insert(2, b'G');
        assert!(parse(&odd).unwrap_err().to_string().contains("0x47"));
    }
}
