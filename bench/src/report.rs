//! What a run produces: the medians, `report.json`, the Markdown table and ratios (printed,
//! written to `report.md`, and put in the README), and the SVG chart of the ratios.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde::Serialize;

use crate::child::ChildReport;
use crate::scenarios::Case;

/// The README markers; only what lies between them is ever rewritten.
pub const README_START: &str = "<!-- bench:start -->";
pub const README_END: &str = "<!-- bench:end -->";

/// One scenario × impl: the medians over its child processes.
#[derive(Clone, Debug)]
pub struct Row {
    pub scenario: String,
    pub impl_name: String,
    pub items: u64,
    /// Every child's wall time, in run order.
    pub walls: Vec<f64>,
    pub wall_s: f64,
    pub items_per_s: f64,
    pub peak_rss_kb: u64,
    pub runs: usize,
    /// The median of each extra figure the children reported (context switches, and what
    /// a scenario records itself); the notes quote them, `report.json` does not.
    pub extra: BTreeMap<String, f64>,
}

impl Row {
    pub fn new(scenario: &str, impl_name: &str, items: u64, reports: &[ChildReport]) -> Self {
        let walls: Vec<f64> = reports.iter().map(|r| r.wall_s).collect();
        let wall_s = median(walls.iter().copied());
        let rss = median(reports.iter().map(|r| r.peak_rss_kb as f64)).round() as u64;
        let mut extra = BTreeMap::new();
        for name in reports.iter().flat_map(|r| r.extra.keys()) {
            if !extra.contains_key(name) {
                let values = reports.iter().filter_map(|r| r.extra.get(name).copied());
                extra.insert(name.clone(), median(values));
            }
        }
        Row {
            scenario: scenario.to_owned(),
            impl_name: impl_name.to_owned(),
            items,
            wall_s,
            items_per_s: items as f64 / wall_s,
            peak_rss_kb: rss,
            runs: walls.len(),
            walls,
            extra,
        }
    }

    /// The median of an extra figure, if the children reported it.
    pub fn extra(&self, name: &str) -> Option<f64> {
        self.extra.get(name).copied()
    }

    fn min_max(&self) -> (f64, f64) {
        let min = self.walls.iter().copied().fold(f64::INFINITY, f64::min);
        let max = self.walls.iter().copied().fold(0.0, f64::max);
        (min, max)
    }
}

fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut values: Vec<f64> = values.collect();
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// A record of `report.json`, exactly the schema of the issue.
#[derive(Serialize)]
struct Record<'a> {
    scenario: &'a str,
    #[serde(rename = "impl")]
    impl_name: &'a str,
    items: u64,
    wall_s: f64,
    items_per_s: f64,
    peak_rss_kb: u64,
    runs: usize,
}

/// Every row of a run, looked up by scenario and impl.
pub struct Results {
    rows: Vec<Row>,
}

impl Results {
    pub fn new(rows: Vec<Row>) -> Self {
        Results { rows }
    }

    pub fn get(&self, scenario: &str, impl_name: &str) -> Option<&Row> {
        self.rows
            .iter()
            .find(|row| row.scenario == scenario && row.impl_name == impl_name)
    }

    /// pyper's items/s over each baseline's, scenario by scenario.
    pub fn ratios(&self) -> Vec<Ratio> {
        self.rows
            .iter()
            .filter(|row| row.impl_name != "pyper")
            .filter_map(|row| {
                let pyper = self.get(&row.scenario, "pyper")?;
                Some(Ratio {
                    scenario: row.scenario.clone(),
                    baseline: row.impl_name.clone(),
                    value: pyper.items_per_s / row.items_per_s,
                })
            })
            .collect()
    }

    pub fn write_json(&self, path: &Path) -> Result<(), String> {
        let records: Vec<Record<'_>> = self
            .rows
            .iter()
            .map(|row| Record {
                scenario: &row.scenario,
                impl_name: &row.impl_name,
                items: row.items,
                wall_s: row.wall_s,
                items_per_s: row.items_per_s,
                peak_rss_kb: row.peak_rss_kb,
                runs: row.runs,
            })
            .collect();
        let json = serde_json::to_string_pretty(&records).map_err(|e| e.to_string())?;
        write(path, &(json + "\n"))
    }
}

/// pyper's throughput over one baseline's in one scenario; above 1, pyper is faster.
pub struct Ratio {
    pub scenario: String,
    pub baseline: String,
    pub value: f64,
}

impl Ratio {
    fn label(&self) -> String {
        format!("{}: pyper / {}", self.scenario, self.baseline)
    }
}

/// Everything the Markdown report says besides the rows.
pub struct Context<'a> {
    pub quick: bool,
    pub date: String,
    pub machine: String,
    pub reps: usize,
    /// The machine's load average around the measurements.
    pub load: String,
    pub cases: &'a [Case],
    /// Why rows are missing, if they are (the Python ones).
    pub skipped: Vec<String>,
    pub notes: Vec<String>,
    /// Where the chart is, relative to the Markdown file; `None` leaves it out.
    pub chart: Option<&'a str>,
}

/// The table, the ratios, the chart and what each row is, as Markdown.
pub fn markdown(context: &Context<'_>, results: &Results, ratios: &[Ratio]) -> String {
    let mut out = String::new();
    let kind = if context.quick {
        "**Quick run** (`--quick`, small sizes: not the figures to quote)"
    } else {
        "Full run"
    };
    let _ = writeln!(
        out,
        "{kind} of {date}, on {machine}. Each row is the median of {reps} fresh child \
         processes, each doing a warm-up run (for Python, over a tenth of the items; where a \
         row says so, over fewer) then one measured run; the impls of a scenario alternate \
         within each repetition. Every run's checksum was verified. 1-minute load \
         average: {load}.\n",
        load = context.load,
        date = context.date,
        machine = context.machine,
        reps = context.reps,
    );
    out.push_str(
        "| scenario | impl | items | wall s (median) | wall s (min–max) | items/s | peak RSS MiB | runs | pyper ÷ impl |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for row in &results.rows {
        let (min, max) = row.min_max();
        let ratio = results
            .get(&row.scenario, "pyper")
            .map(|pyper| format!("{:.2}x", pyper.items_per_s / row.items_per_s))
            .unwrap_or_else(|| "–".into());
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {}–{} | {} | {:.1} | {} | {} |",
            row.scenario,
            row.impl_name,
            row.items,
            seconds(row.wall_s),
            seconds(min),
            seconds(max),
            si(row.items_per_s),
            row.peak_rss_kb as f64 / 1024.0,
            row.runs,
            ratio,
        );
    }
    for skipped in &context.skipped {
        let _ = writeln!(out, "\n_Skipped: {skipped}_");
    }

    out.push_str("\nRatios: pyper's items/s over the baseline's (above 1, pyper is faster).\n\n");
    for ratio in ratios {
        let _ = writeln!(out, "- {} = {:.2}x", ratio.label(), ratio.value);
    }
    for note in &context.notes {
        let _ = writeln!(out, "- {note}");
    }

    if let Some(chart) = context.chart {
        let _ = writeln!(
            out,
            "\n![pyper's throughput over each baseline's, per scenario]({chart})"
        );
    }

    out.push_str("\nWhat each row is (`items` counts source items):\n\n");
    for case in context.cases {
        let _ = writeln!(out, "- `{}`: {}.", case.name, case.about);
        for imp in &case.impls {
            let _ = writeln!(out, "  - {}: {}.", imp.name, imp.about);
        }
    }
    out.push_str(
        "\nEvery impl of a scenario calls the same `#[inline(never)]` work function \
         (`bench/src/work.rs`). Python rows use their own interpreter's VmHWM (with \
         `multiprocess=True`, the main process only).\n\n\
         To reproduce: `cargo run --release -p pyper-bench -- --update-readme` (a few \
         minutes; it rewrites this section and `docs/bench/ratios.svg`). \
         `cargo run --release -p pyper-bench -- --quick` is the smoke run meant for CI, under a \
         minute. Raw records: `target/bench/report.json`.\n",
    );
    out
}

/// Seconds to 3 significant digits: `6.12`, `0.0123`, `0.000123`.
fn seconds(s: f64) -> String {
    let digits = if s > 0.0 {
        (2 - s.log10().floor() as i32).clamp(0, 9) as usize
    } else {
        3
    };
    format!("{s:.digits$}")
}

/// `12345678.0` → `12.3 M`.
fn si(value: f64) -> String {
    if value >= 1e6 {
        format!("{:.2} M", value / 1e6)
    } else if value >= 1e3 {
        format!("{:.1} k", value / 1e3)
    } else {
        format!("{value:.1}")
    }
}

/// A horizontal bar per ratio, on a log scale, with parity marked.
pub fn chart(path: &Path, title: &str, ratios: &[Ratio]) -> Result<(), String> {
    let error = |e: &dyn std::fmt::Display| format!("chart {}: {e}", path.display());
    // At least 2 segments: a segmented range of one value is degenerate (`--only` runs).
    let n = ratios.len().max(2);
    let lo = ratios.iter().map(|r| r.value).fold(0.5, f64::min).max(1e-3) / 1.5;
    let hi = ratios.iter().map(|r| r.value).fold(2.0, f64::max) * 3.0;
    // Bars top to bottom in report order: segment 0 is at the bottom.
    let labels: Vec<String> = ratios.iter().rev().map(Ratio::label).collect();

    let root = SVGBackend::new(path, (960, 90 + 36 * n as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| error(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(300)
        // An integer range is inclusive here: `0..n - 1` makes n segments.
        .build_cartesian_2d((lo..hi).log_scale(), (0..n - 1).into_segmented())
        .map_err(|e| error(&e))?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(n)
        .y_label_style(("sans-serif", 14))
        .x_label_style(("sans-serif", 13))
        .axis_desc_style(("sans-serif", 14))
        .y_label_formatter(&|value| match value {
            SegmentValue::CenterOf(i) => labels.get(*i).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .x_desc("pyper items/s ÷ baseline items/s (log scale; 1 = parity)")
        .x_label_formatter(&|x| format!("{}x", trim(*x)))
        .draw()
        .map_err(|e| error(&e))?;

    let faster = RGBColor(46, 139, 87);
    let slower = RGBColor(205, 80, 60);
    chart
        .draw_series(ratios.iter().rev().enumerate().map(|(i, ratio)| {
            let color = if ratio.value >= 1.0 { faster } else { slower };
            let mut bar = Rectangle::new(
                // From parity to the ratio: right if pyper is faster, left if slower.
                [
                    (1.0, SegmentValue::Exact(i)),
                    (ratio.value, SegmentValue::Exact(i + 1)),
                ],
                color.filled(),
            );
            bar.set_margin(6, 6, 0, 0);
            bar
        }))
        .map_err(|e| error(&e))?;
    chart
        .draw_series(std::iter::once(PathElement::new(
            vec![(1.0, SegmentValue::Exact(0)), (1.0, SegmentValue::Exact(n))],
            BLACK.stroke_width(2),
        )))
        .map_err(|e| error(&e))?;
    let value_style = ("sans-serif", 14)
        .into_font()
        .color(&BLACK)
        .pos(Pos::new(HPos::Left, VPos::Center));
    chart
        .draw_series(ratios.iter().rev().enumerate().map(|(i, ratio)| {
            Text::new(
                format!(" {:.2}x", ratio.value),
                // Right of the parity line, so a short bar's figure stays readable.
                (ratio.value.max(1.0), SegmentValue::CenterOf(i)),
                value_style.clone(),
            )
        }))
        .map_err(|e| error(&e))?;
    root.present().map_err(|e| error(&e))?;
    Ok(())
}

/// `0.5` → `0.5`, `10.000001` → `10`.
fn trim(x: f64) -> String {
    let text = format!("{x:.3}");
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// Puts `section` between the README's markers, or appends a "Performance" section with
/// the markers if the README or the markers do not exist yet. Nothing outside the markers
/// changes, and the file is read right before it is written.
pub fn update_readme(path: &Path, section: &str) -> Result<(), String> {
    let current = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(error) => return Err(format!("{}: {error}", path.display())),
    };
    let block = format!("{README_START}\n{}\n{README_END}", section.trim_end());
    let updated = match (current.find(README_START), current.find(README_END)) {
        (Some(start), Some(end)) if start < end => format!(
            "{}{block}{}",
            &current[..start],
            &current[end + README_END.len()..]
        ),
        (None, None) => {
            let mut text = current;
            if !text.is_empty() {
                if !text.ends_with('\n') {
                    text.push('\n');
                }
                text.push('\n');
            }
            text + "## Performance\n\n" + &block + "\n"
        }
        _ => {
            return Err(format!(
                "{}: the markers {README_START} and {README_END} are not one ordered pair; \
                 fix them by hand",
                path.display()
            ))
        }
    };
    write(path, &updated)
}

pub fn write(path: &Path, text: &str) -> Result<(), String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_readme_section_is_appended_then_replaced_in_place() {
        let dir = std::env::temp_dir().join(format!("pyper-bench-test-{}", std::process::id()));
        let readme = dir.join("README.md");
        write(&readme, "# pyper\n\nIntro.").unwrap();
        update_readme(&readme, "first").unwrap();
        let text = std::fs::read_to_string(&readme).unwrap();
        assert_eq!(
            text,
            format!("# pyper\n\nIntro.\n\n## Performance\n\n{README_START}\nfirst\n{README_END}\n")
        );
        let edited = text.replace("Intro.", "Intro, edited.") + "\n## Later\n";
        write(&readme, &edited).unwrap();
        update_readme(&readme, "second\n").unwrap();
        assert_eq!(
            std::fs::read_to_string(&readme).unwrap(),
            edited.replace("first", "second")
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn medians() {
        assert_eq!(median([3.0, 1.0, 2.0].into_iter()), 2.0);
        assert_eq!(median([4.0, 1.0, 2.0, 3.0].into_iter()), 2.5);
    }

    #[test]
    fn seconds_keep_three_significant_digits() {
        assert_eq!(seconds(6.123), "6.12");
        assert_eq!(seconds(12.34), "12.3");
        assert_eq!(seconds(0.012345), "0.0123");
        assert_eq!(seconds(0.00012345), "0.000123");
    }
}
