//! Draws the held-out perplexity of `shears finetune --json` runs against the tokens trained, one
//! line per run, into a PNG:
//!
//! ```text
//! cargo run --release --manifest-path tools/plot/Cargo.toml -- OUT.png "label=run.json" ...
//! ```
//!
//! Each `run.json` is the one line `shears finetune --json` printed (its `heldout` array of
//! `{step, tokens, ppl}`). Text is drawn with DejaVu Sans (Debian `fonts-dejavu-core`), or the
//! TrueType file `$SHEARS_PLOT_FONT` names.

use plotters::prelude::*;
use plotters::style::register_font;
use std::error::Error;

const FONTS: [&str; 2] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        return Err("usage: shears-plot OUT.png label=run.json [label=run.json ...]".into());
    }
    let font_path = std::env::var("SHEARS_PLOT_FONT")
        .ok()
        .or_else(|| FONTS.iter().find(|p| std::path::Path::new(p).exists()).map(|p| p.to_string()))
        .ok_or("no TrueType font: install fonts-dejavu-core or set SHEARS_PLOT_FONT")?;
    let font: &'static [u8] = Box::leak(std::fs::read(&font_path)?.into_boxed_slice());
    register_font("sans-serif", FontStyle::Normal, font).map_err(|_| "bad font file")?;

    let mut runs: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    for a in &args[1..] {
        let (label, path) = a.split_once('=').ok_or(format!("expected label=file, got {a}"))?;
        let text = std::fs::read_to_string(path)?;
        let line = text.lines().last().ok_or(format!("{path} is empty"))?;
        let v: serde_json::Value = serde_json::from_str(line)?;
        let pts: Vec<(f64, f64)> = v["heldout"]
            .as_array()
            .ok_or(format!("{path} has no heldout array"))?
            .iter()
            .filter_map(|p| Some((p["tokens"].as_f64()?, p["ppl"].as_f64()?)))
            .collect();
        if pts.is_empty() {
            return Err(format!("{path}: no held-out points").into());
        }
        runs.push((label.to_string(), pts));
    }
    let max_tokens = runs.iter().flat_map(|r| r.1.iter().map(|p| p.0)).fold(1.0, f64::max);
    let (lo, hi) = runs
        .iter()
        .flat_map(|r| r.1.iter().map(|p| p.1))
        .fold((f64::INFINITY, 0f64), |(a, b), y| (a.min(y), b.max(y)));
    let out = &args[0];
    let root = BitMapBackend::new(out, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("Held-out perplexity while fine-tuning (SmolLM2-135M)", ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(0f64..max_tokens * 1.02, (lo * 0.9).ln()..(hi * 1.1).ln())?;
    chart
        .configure_mesh()
        .x_desc("tokens trained")
        .y_desc("held-out perplexity (log scale)")
        .y_label_formatter(&|y| format!("{:.0}", y.exp()))
        .x_label_formatter(&|x| format!("{:.0}k", x / 1000.0))
        .label_style(("sans-serif", 14))
        .draw()?;
    for (i, (label, pts)) in runs.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let series: Vec<(f64, f64)> = pts.iter().map(|&(x, y)| (x, y.ln())).collect();
        chart
            .draw_series(LineSeries::new(series.clone(), color.stroke_width(2)))?
            .label(label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        chart.draw_series(series.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 15))
        .draw()?;
    root.present()?;
    eprintln!("wrote {out}");
    Ok(())
}
