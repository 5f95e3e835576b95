//! `chart`: ops/s against concurrency, one line per series (label), from
//! result files.

use std::{collections::BTreeMap, path::Path};

use plotters::prelude::*;
use serde::Deserialize;

use crate::cli::ChartArgs;

/// The family name the font is registered under.
const FAMILY: &str = "sans-serif";

/// Line colours (Tableau 10): distinct from each other and all readable on
/// white, unlike plotters' palettes, which include pale yellows.
const COLORS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// What a chart reads of a result (as `run --json` writes it); other
/// fields are ignored.
#[derive(Deserialize)]
struct Point {
    #[serde(default)]
    label: String,
    target: String,
    workload: String,
    concurrency: u32,
    ops_per_sec: f64,
}

impl Point {
    /// The series name: the label, or target and workload.
    fn series(&self) -> String {
        if self.label.is_empty() {
            format!("{} {}", self.target, self.workload)
        } else {
            self.label.clone()
        }
    }
}

/// One line: (concurrency, median ops/s) points in concurrency order.
struct Series {
    name: String,
    points: Vec<(u32, f64)>,
}

pub(crate) fn chart(args: &ChartArgs) -> Result<(), String> {
    register_font(&args.font)?;
    let mut results = Vec::new();
    for path in &args.input {
        results.extend(load(path)?);
    }
    let series = group(&results);
    if series.is_empty() {
        return Err("the input files hold no results".into());
    }
    draw(args, &series).map_err(|e| format!("cannot draw {}: {e}", args.out.display()))?;
    println!(
        "wrote {} ({} series, {} results)",
        args.out.display(),
        series.len(),
        results.len()
    );
    Ok(())
}

fn register_font(path: &Path) -> Result<(), String> {
    let bytes = std::fs::read(path).map_err(|e| {
        format!(
            "cannot read the font {} (--font): {e}; install Debian's fonts-dejavu-core or pass --font with a TrueType font",
            path.display()
        )
    })?;
    // plotters keeps registered fonts for the life of the process: leaking
    // the one buffer is what that asks for.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font(FAMILY, FontStyle::Normal, bytes).map_err(|_| {
        format!(
            "{} (--font) is not a TrueType or OpenType font",
            path.display()
        )
    })
}

/// Reads a file holding one result object or an array of them.
fn load(path: &Path) -> Result<Vec<Point>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{} is not JSON: {e}", path.display()))?;
    let items = match json {
        serde_json::Value::Array(items) => items,
        object => vec![object],
    };
    items
        .into_iter()
        .map(|item| {
            serde_json::from_value(item).map_err(|e| {
                format!(
                    "{} holds something that is not a result: {e}",
                    path.display()
                )
            })
        })
        .collect()
}

/// Groups results by series, in order of first appearance; repeated runs at
/// one concurrency become their median.
fn group(results: &[Point]) -> Vec<Series> {
    let mut order: Vec<String> = Vec::new();
    let mut runs: BTreeMap<String, BTreeMap<u32, Vec<f64>>> = BTreeMap::new();
    for result in results {
        let name = result.series();
        if !runs.contains_key(&name) {
            order.push(name.clone());
        }
        runs.entry(name)
            .or_default()
            .entry(result.concurrency)
            .or_default()
            .push(result.ops_per_sec);
    }
    order
        .into_iter()
        .map(|name| {
            let points = runs[&name]
                .iter()
                .map(|(&concurrency, values)| (concurrency, median(values)))
                .collect();
            Series { name, points }
        })
        .collect()
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    }
}

fn draw(args: &ChartArgs, series: &[Series]) -> Result<(), Box<dyn std::error::Error>> {
    // x is log2(concurrency) on a linear axis: doublings are evenly spaced
    // and the ticks fall on powers of two.
    let log2 = |c: u32| f64::from(c.max(1)).log2();
    let xs = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| log2(p.0)));
    let (x_min, x_max) = xs.fold((f64::MAX, f64::MIN), |(lo, hi), x| (lo.min(x), hi.max(x)));
    let x_range = (x_min.floor() - 0.25)..(x_max.ceil() + 0.25);
    let ticks = (x_max.ceil() - x_min.floor()) as usize + 1;
    let y_max = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(0.0, f64::max)
        .max(1.0)
        * 1.1;

    let (width, height) = args.size;
    let mut rgb = vec![0u8; width as usize * height as usize * 3];
    let root = BitMapBackend::with_buffer(&mut rgb, args.size).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(&args.title, (FAMILY, 28))
        .margin(20)
        .x_label_area_size(55)
        .y_label_area_size(85)
        .build_cartesian_2d(x_range, 0.0..y_max)?;
    chart
        .configure_mesh()
        .x_labels(ticks)
        .x_label_formatter(&|x| {
            let r = x.round();
            if (x - r).abs() < 1e-6 {
                format!("{}", 2f64.powf(r).round())
            } else {
                String::new()
            }
        })
        .y_label_formatter(&|y| {
            if *y == 0.0 {
                "0".to_string()
            } else if y_max >= 10_000.0 {
                format!("{:.0}k", y / 1000.0)
            } else {
                format!("{y:.0}")
            }
        })
        .x_desc("concurrency (operations in flight)")
        .y_desc("operations per second")
        .label_style((FAMILY, 16))
        .axis_desc_style((FAMILY, 18))
        .draw()?;

    for (i, line) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let points: Vec<(f64, f64)> = line.points.iter().map(|&(c, y)| (log2(c), y)).collect();
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
            .label(line.name.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(3))
            });
        chart.draw_series(points.iter().map(|&p| Circle::new(p, 4, color.filled())))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font((FAMILY, 16))
        .draw()?;
    root.present()?;
    drop(chart);
    drop(root);
    write_png(&args.out, width, height, &rgb)
}

fn write_png(
    path: &Path,
    width: u32,
    height: u32,
    rgb: &[u8],
) -> Result<(), Box<dyn std::error::Error>> {
    let file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut encoder = png::Encoder::new(file, width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(rgb)?;
    writer.finish()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[7.0]), 7.0);
    }
}
