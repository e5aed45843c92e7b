//! `cargo xtask augment-preview`: a PNG grid of MNIST digits, each row one digit: the
//! original, then augmented copies, so a person can see what a recipe does.

use std::path::{Path, PathBuf};

use clap::Args;
use dl_data::{Mnist, Pipeline};

use crate::CliError;

#[derive(Args)]
pub struct PreviewArgs {
    /// Output PNG file (default: runs/augment-preview.png, or runs/augment-preview-2.png
    /// and so on when that exists).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Replace --out if it exists.
    #[arg(long)]
    overwrite: bool,
    /// Digits (rows).
    #[arg(long, default_value_t = 8)]
    rows: usize,
    /// Augmented copies per digit (columns after the original).
    #[arg(long, default_value_t = 7)]
    copies: usize,
    /// Add elastic distortion (alpha 8, sigma 3) to the recipe.
    #[arg(long)]
    elastic: bool,
    /// Seed of the draws.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Folder with the MNIST files (default: the shipped copy).
    #[arg(long)]
    data: Option<PathBuf>,
}

pub fn run(a: PreviewArgs) -> Result<(), CliError> {
    let out = crate::output_file(a.out.as_deref(), a.overwrite, Path::new("runs/augment-preview.png"))?;
    let mnist = Mnist::load(a.data.unwrap_or_else(crate::default_data_dir))?;
    let (h, w) = (mnist.train.height, mnist.train.width);
    let (rows, zoom, gap) = (a.rows.max(1), 3usize, 2usize);
    let pipeline = Pipeline::mnist(a.elastic, a.seed);
    let mut cells: Vec<Vec<Vec<f32>>> = Vec::with_capacity(rows);
    for r in 0..rows {
        let (orig, _) = mnist.train.batch(&[r]);
        let orig = orig.into_raw_vec_and_offset().0;
        let mut copies: Vec<f32> = orig.iter().copied().cycle().take(orig.len() * a.copies).collect();
        pipeline.apply_batch(&mut copies, h, w, r as u64);
        let mut row = vec![orig];
        row.extend(copies.chunks_exact(h * w).map(<[f32]>::to_vec));
        cells.push(row);
    }
    let (width, height, pixels) = grid(&cells, h, w, zoom, gap);
    let mut bytes = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut bytes, width as u32, height as u32);
        enc.set_color(png::ColorType::Grayscale);
        enc.set_depth(png::BitDepth::Eight);
        let mut writer = enc.write_header().map_err(|e| CliError::Other(e.to_string()))?;
        writer
            .write_image_data(&pixels)
            .map_err(|e| CliError::Other(e.to_string()))?;
    }
    crate::write_output(&out, &bytes)?;
    println!(
        "wrote {} ({rows} digits: the original, then {} augmented copies)",
        out.display(),
        a.copies
    );
    Ok(())
}

/// Grey pixels (0 to 255) of a grid of `h x w` images of values in 0 to 1 (clamped),
/// `cells[row][column]`, each drawn `zoom` times larger, `gap` pixels of dark grey (64)
/// around and between them: the grid's width, height and its pixels, row after row.
fn grid(cells: &[Vec<Vec<f32>>], h: usize, w: usize, zoom: usize, gap: usize) -> (usize, usize, Vec<u8>) {
    let cols = cells.iter().map(Vec::len).max().unwrap_or(0);
    let (width, height) = (cols * (w * zoom + gap) + gap, cells.len() * (h * zoom + gap) + gap);
    let mut pixels = vec![64u8; width * height];
    for (r, row) in cells.iter().enumerate() {
        for (c, img) in row.iter().enumerate() {
            for y in 0..h * zoom {
                for x in 0..w * zoom {
                    let v = img[(y / zoom) * w + x / zoom].clamp(0.0, 1.0);
                    let (py, px) = (gap + r * (h * zoom + gap) + y, gap + c * (w * zoom + gap) + x);
                    pixels[py * width + px] = (v * 255.0).round() as u8;
                }
            }
        }
    }
    (width, height, pixels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grid_places_each_image_zoomed_between_gaps() {
        // two rows of two 1x2 images, three times as large, 1-pixel gaps
        let cells = vec![
            vec![vec![0.0, 1.0], vec![0.2, 2.0]],
            vec![vec![-1.0, 0.6], vec![0.4, 0.8]],
        ];
        let (width, height, pixels) = grid(&cells, 1, 2, 3, 1);
        assert_eq!((width, height), (15, 9));
        let g = 64;
        let gaps = [g; 15];
        let row0 = [g, 0, 0, 0, 255, 255, 255, g, 51, 51, 51, 255, 255, 255, g];
        let row1 = [g, 0, 0, 0, 153, 153, 153, g, 102, 102, 102, 204, 204, 204, g];
        let want = [gaps, row0, row0, row0, gaps, row1, row1, row1, gaps].concat();
        assert_eq!(pixels, want);
    }

    #[test]
    fn writes_a_png_grid_of_the_asked_size() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("sub/p.png");
        let args = |rows: usize, overwrite: bool| PreviewArgs {
            out: Some(out.clone()),
            overwrite,
            rows,
            copies: 3,
            elastic: true,
            seed: 1,
            data: None,
        };
        let size = || {
            let decoder = png::Decoder::new(std::fs::File::open(&out).unwrap());
            let reader = decoder.read_info().unwrap();
            (reader.info().width, reader.info().height)
        };
        run(args(2, false)).unwrap();
        // 4 columns and 2 rows of 84-pixel cells with 2-pixel gaps
        assert_eq!(size(), (4 * 86 + 2, 2 * 86 + 2));
        // the file is not replaced unless asked
        let err = run(args(1, false)).unwrap_err().to_string();
        assert!(err.contains("--overwrite"), "{err}");
        assert_eq!(size(), (4 * 86 + 2, 2 * 86 + 2));
        run(args(1, true)).unwrap();
        assert_eq!(size(), (4 * 86 + 2, 86 + 2));
    }
}
