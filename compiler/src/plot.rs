//! A small line plot (SQNR against timestep) rendered straight to PNG with the `image` crate and a
//! built-in 3x5 pixel font for the labels, so plotting needs no font files or system libraries.
use image::{Rgb, RgbImage};

const W: u32 = 900;
const H: u32 = 520;
const LEFT: u32 = 70;
const RIGHT: u32 = 30;
const TOP: u32 = 40;
const BOTTOM: u32 = 60;
/// Line colours, one per series.
pub const COLOURS: [[u8; 3]; 6] = [
    [31, 119, 180],
    [214, 39, 40],
    [44, 160, 44],
    [148, 103, 189],
    [255, 127, 14],
    [23, 190, 207],
];

/// 3x5 glyphs (rows top to bottom, 3 bits each, MSB left).
fn glyph(c: char) -> [u8; 5] {
    match c {
        '0' => [7, 5, 5, 5, 7],
        '1' => [2, 6, 2, 2, 7],
        '2' => [7, 1, 7, 4, 7],
        '3' => [7, 1, 7, 1, 7],
        '4' => [5, 5, 7, 1, 1],
        '5' => [7, 4, 7, 1, 7],
        '6' => [7, 4, 7, 5, 7],
        '7' => [7, 1, 1, 2, 2],
        '8' => [7, 5, 7, 5, 7],
        '9' => [7, 5, 7, 1, 7],
        '.' => [0, 0, 0, 0, 2],
        '-' => [0, 0, 7, 0, 0],
        '=' => [0, 7, 0, 7, 0],
        '(' => [1, 2, 2, 2, 1],
        ')' => [4, 2, 2, 2, 4],
        '/' => [1, 1, 2, 4, 4],
        ':' => [0, 2, 0, 2, 0],
        'A' | 'a' => [2, 5, 7, 5, 5],
        'B' | 'b' => [6, 5, 6, 5, 6],
        'C' | 'c' => [7, 4, 4, 4, 7],
        'D' | 'd' => [6, 5, 5, 5, 6],
        'E' | 'e' => [7, 4, 6, 4, 7],
        'F' | 'f' => [7, 4, 6, 4, 4],
        'G' | 'g' => [7, 4, 5, 5, 7],
        'H' | 'h' => [5, 5, 7, 5, 5],
        'I' | 'i' => [7, 2, 2, 2, 7],
        'J' | 'j' => [1, 1, 1, 5, 7],
        'K' | 'k' => [5, 5, 6, 5, 5],
        'L' | 'l' => [4, 4, 4, 4, 7],
        'M' | 'm' => [5, 7, 7, 5, 5],
        'N' | 'n' => [6, 5, 5, 5, 5],
        'O' | 'o' => [7, 5, 5, 5, 7],
        'P' | 'p' => [7, 5, 7, 4, 4],
        'Q' | 'q' => [7, 5, 5, 7, 1],
        'R' | 'r' => [6, 5, 6, 5, 5],
        'S' | 's' => [7, 4, 7, 1, 7],
        'T' | 't' => [7, 2, 2, 2, 2],
        'U' | 'u' => [5, 5, 5, 5, 7],
        'V' | 'v' => [5, 5, 5, 5, 2],
        'W' | 'w' => [5, 5, 7, 7, 5],
        'X' | 'x' => [5, 5, 2, 5, 5],
        'Y' | 'y' => [5, 5, 2, 2, 2],
        'Z' | 'z' => [7, 1, 2, 4, 7],
        _ => [0; 5],
    }
}

fn text(img: &mut RgbImage, x: u32, y: u32, s: &str, scale: u32, col: Rgb<u8>) {
    for (i, c) in s.chars().enumerate() {
        let g = glyph(c);
        for (r, bits) in g.iter().enumerate() {
            for b in 0..3 {
                if bits & (4 >> b) != 0 {
                    for dy in 0..scale {
                        for dx in 0..scale {
                            let (px, py) = (
                                x + (i as u32 * 4 + b) * scale + dx,
                                y + r as u32 * scale + dy,
                            );
                            if px < img.width() && py < img.height() {
                                img.put_pixel(px, py, col);
                            }
                        }
                    }
                }
            }
        }
    }
}

fn line(img: &mut RgbImage, (x0, y0): (f32, f32), (x1, y1): (f32, f32), col: Rgb<u8>, thick: i32) {
    let n = ((x1 - x0).abs().max((y1 - y0).abs()) as usize).max(1);
    for i in 0..=n {
        let f = i as f32 / n as f32;
        let (x, y) = ((x0 + (x1 - x0) * f) as i32, (y0 + (y1 - y0) * f) as i32);
        for dy in -thick / 2..=thick / 2 {
            for dx in -thick / 2..=thick / 2 {
                let (px, py) = (x + dx, y + dy);
                if px >= 0 && py >= 0 && (px as u32) < img.width() && (py as u32) < img.height() {
                    img.put_pixel(px as u32, py as u32, col);
                }
            }
        }
    }
}

/// Renders series of (t, dB) points: x from 0 to `t_max`, y from 0 to the next 10 dB above the data.
pub fn sqnr_plot(title: &str, series: &[(String, Vec<(f32, f64)>)], t_max: f32) -> RgbImage {
    let mut img = RgbImage::from_pixel(W, H, Rgb([255, 255, 255]));
    let y_max = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|&(_, d)| d))
        .fold(10.0f64, f64::max);
    let y_max = ((y_max / 10.0).ceil() * 10.0).max(10.0);
    let (pw, ph) = ((W - LEFT - RIGHT) as f32, (H - TOP - BOTTOM) as f32);
    let to_px = |t: f32, d: f64| {
        (
            LEFT as f32 + t / t_max * pw,
            TOP as f32 + ph - (d.clamp(0.0, y_max) / y_max) as f32 * ph,
        )
    };
    let grey = Rgb([220, 220, 220]);
    let black = Rgb([0, 0, 0]);
    // grid and ticks
    let mut d = 0.0;
    while d <= y_max + 1e-9 {
        let (_, y) = to_px(0.0, d);
        line(&mut img, (LEFT as f32, y), (LEFT as f32 + pw, y), grey, 1);
        text(
            &mut img,
            LEFT - 30,
            y as u32 - 5,
            &format!("{d:.0}"),
            2,
            black,
        );
        d += 10.0;
    }
    let step = if t_max > 500.0 {
        100.0
    } else if t_max > 50.0 {
        10.0
    } else {
        1.0
    };
    let mut t = 0.0;
    while t <= t_max + 1e-3 {
        let (x, _) = to_px(t, 0.0);
        line(&mut img, (x, TOP as f32), (x, TOP as f32 + ph), grey, 1);
        text(
            &mut img,
            x as u32 - 8,
            TOP + ph as u32 + 8,
            &format!("{t:.0}"),
            2,
            black,
        );
        t += step;
    }
    line(
        &mut img,
        (LEFT as f32, TOP as f32),
        (LEFT as f32, TOP as f32 + ph),
        black,
        2,
    );
    line(
        &mut img,
        (LEFT as f32, TOP as f32 + ph),
        (LEFT as f32 + pw, TOP as f32 + ph),
        black,
        2,
    );
    text(
        &mut img,
        LEFT + pw as u32 / 2 - 40,
        H - 22,
        "TIMESTEP T",
        3,
        black,
    );
    text(&mut img, 6, TOP - 28, "SQNR DB", 3, black);
    text(&mut img, LEFT + 140, 8, title, 3, black);
    for (k, (name, pts)) in series.iter().enumerate() {
        let col = Rgb(COLOURS[k % COLOURS.len()]);
        for w in pts.windows(2) {
            line(
                &mut img,
                to_px(w[0].0, w[0].1),
                to_px(w[1].0, w[1].1),
                col,
                3,
            );
        }
        for &(t, d) in pts {
            let (x, y) = to_px(t, d);
            line(&mut img, (x - 3.0, y), (x + 3.0, y), col, 5);
        }
        // legend
        let ly = TOP + ph as u32 - 30 - 22 * (series.len() as u32 - 1 - k as u32);
        line(
            &mut img,
            ((W - RIGHT - 260) as f32, ly as f32 + 5.0),
            ((W - RIGHT - 230) as f32, ly as f32 + 5.0),
            col,
            4,
        );
        text(&mut img, W - RIGHT - 222, ly, name, 2, black);
    }
    img
}
