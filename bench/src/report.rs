//! The results: each figure next to its anchor, as a table row and as one JSON line; the
//! arithmetic of rates and ratios (pure, tested below).

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;

use serde::Serialize;
use serde_json::{Map, Value};

/// What a figure measures, and so how it is rounded and printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Unit {
    #[serde(rename = "rows/s")]
    RowsPerS,
    #[serde(rename = "ms")]
    Ms,
    #[serde(rename = "cpu_s_per_1m")]
    CpuSPerMillion,
    #[serde(rename = "MiB")]
    Mib,
    #[serde(rename = "MiB_per_1m")]
    MibPerMillion,
}

impl Unit {
    fn decimals(self) -> i32 {
        match self {
            Self::RowsPerS => 0,
            Self::Ms | Self::Mib | Self::MibPerMillion => 1,
            Self::CpuSPerMillion => 2,
        }
    }

    /// A value rounded as this unit prints it.
    pub fn round(self, value: f64) -> f64 {
        round(value, self.decimals())
    }

    fn cell(self, value: Option<f64>) -> String {
        let Some(value) = value else { return "n/a".to_owned() };
        let number = format!("{value:.*}", usize::try_from(self.decimals()).unwrap_or(0));
        match self {
            Self::RowsPerS => format!("{number} rows/s"),
            Self::Ms => format!("{number} ms"),
            Self::CpuSPerMillion => format!("{number} CPU s/1M"),
            Self::Mib => format!("{number} MiB"),
            Self::MibPerMillion => format!("{number} MiB/1M"),
        }
    }
}

/// `value` rounded to `decimals` decimals.
pub fn round(value: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (value * scale).round() / scale
}

/// Rows per second, unknown for a zero or unknown duration.
pub fn rate(rows: u64, seconds: Option<f64>) -> Option<f64> {
    #[allow(clippy::cast_precision_loss)] // row counts stay far below 2^52
    seconds.filter(|&s| s > 0.0).map(|s| round(rows as f64 / s, 0))
}

/// `a / b` to 2 decimals; unknown when either is unknown or `b` is not positive.
pub fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(round(a / b, 2)),
        _ => None,
    }
}

/// CPU seconds per million rows.
pub fn per_million(cpu_s: Option<f64>, rows: u64) -> Option<f64> {
    #[allow(clippy::cast_precision_loss)]
    cpu_s.filter(|_| rows > 0).map(|s| round(s * 1_000_000.0 / rows as f64, 2))
}

/// The sum of values, unknown if any is.
pub fn sum(values: &[Option<f64>]) -> Option<f64> {
    values.iter().try_fold(0.0, |acc, v| v.map(|v| acc + v))
}

/// kB as MiB.
pub fn mib(kb: Option<u64>) -> Option<f64> {
    #[allow(clippy::cast_precision_loss)]
    kb.map(|kb| round(kb as f64 / 1024.0, 1))
}

/// One figure: TREMpy's value next to its anchor.
#[derive(Clone, Debug)]
pub struct Figure {
    pub case: String,
    pub metric: String,
    pub unit: Unit,
    pub trempy: Option<f64>,
    /// What the anchor is; `None` when the figure has none.
    pub anchor: Option<String>,
    pub anchor_value: Option<f64>,
    /// The target, printed for information, and whether it was met (`None`: not judged).
    pub target: Option<(String, Option<bool>)>,
    /// Raw measurements behind the figure, for the JSON line.
    pub extra: Map<String, Value>,
}

impl Figure {
    pub fn new(case: &str, metric: &str, unit: Unit, trempy: Option<f64>) -> Self {
        Self {
            case: case.to_owned(),
            metric: metric.to_owned(),
            unit,
            trempy: trempy.map(|v| unit.round(v)),
            anchor: None,
            anchor_value: None,
            target: None,
            extra: Map::new(),
        }
    }

    pub fn anchor(mut self, anchor: &str, value: Option<f64>) -> Self {
        self.anchor = Some(anchor.to_owned());
        self.anchor_value = value.map(|v| self.unit.round(v));
        self
    }

    pub fn target(mut self, target: &str, met: Option<bool>) -> Self {
        self.target = Some((target.to_owned(), met));
        self
    }

    /// Adds raw measurements (an object's fields) to the JSON line.
    pub fn extra(mut self, fields: Value) -> Self {
        if let Value::Object(fields) = fields {
            self.extra.extend(fields);
        }
        self
    }

    pub fn ratio(&self) -> Option<f64> {
        ratio(self.trempy, self.anchor_value)
    }

    fn cells(&self, disturbed: bool) -> [String; 7] {
        let target = match &self.target {
            None => "-".to_owned(),
            Some((t, None)) => t.clone(),
            Some((t, Some(met))) => format!("{t}: {}", if *met { "yes" } else { "no" }),
        };
        [
            format!("{}{}", if disturbed { "(!) " } else { "" }, self.case),
            self.metric.clone(),
            self.unit.cell(self.trempy),
            self.anchor.clone().unwrap_or_else(|| "-".to_owned()),
            if self.anchor.is_some() { self.unit.cell(self.anchor_value) } else { "-".to_owned() },
            self.ratio().map_or_else(|| "-".to_owned(), |r| format!("{r:.2}")),
            target,
        ]
    }
}

/// What every JSON line of a run carries.
#[derive(Clone, Debug, Serialize)]
pub struct RunContext {
    pub run_id: String,
    pub quick: bool,
    pub nproc: usize,
    pub mem_kb: u64,
    pub postgresql: String,
    pub rabbitmq: String,
    pub loadavg_start: String,
}

/// The figures and detail lines of a run, and where their JSON lines go.
pub struct Report {
    context: RunContext,
    results: PathBuf,
    rows: Vec<[String; 7]>,
    details: Vec<String>,
    /// The reasons the running case was disturbed (a restart, a stalled writer).
    disturbed: Vec<String>,
    pub disturbed_any: bool,
}

impl Report {
    pub fn new(context: RunContext, results: PathBuf) -> Self {
        Self { context, results, rows: Vec::new(), details: Vec::new(), disturbed: Vec::new(), disturbed_any: false }
    }

    pub fn context(&self) -> &RunContext {
        &self.context
    }

    /// A new case begins: nothing disturbs it yet.
    pub fn begin_case(&mut self) {
        self.disturbed.clear();
    }

    /// Marks the current case's rows.
    pub fn disturbed(&mut self, reason: &str) {
        self.disturbed.push(reason.to_owned());
        self.disturbed_any = true;
    }

    /// Why the current case is disturbed, if it is.
    pub fn disturbance(&self) -> Option<String> {
        (!self.disturbed.is_empty()).then(|| self.disturbed.join("; "))
    }

    pub fn detail(&mut self, line: String) {
        self.details.push(line);
    }

    /// Records a figure: a table row and a JSON line appended to the results file.
    pub fn figure(&mut self, figure: &Figure) -> std::io::Result<()> {
        let disturbed = self.disturbance();
        self.rows.push(figure.cells(disturbed.is_some()));
        let line = json_line(&self.context, figure, disturbed.as_deref());
        let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&self.results)?;
        writeln!(file, "{line}")
    }

    /// Appends the run's closing JSON line.
    pub fn append(&self, line: &Value) -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&self.results)?;
        writeln!(file, "{line}")
    }

    pub fn table(&self) -> String {
        render_table(&self.rows)
    }

    pub fn details(&self) -> &[String] {
        &self.details
    }
}

fn json_line(context: &RunContext, figure: &Figure, disturbed: Option<&str>) -> Value {
    let mut line = match serde_json::to_value(context) {
        Ok(Value::Object(map)) => map,
        _ => Map::new(),
    };
    let (target, met) = figure.target.clone().map_or((String::new(), None), |(t, m)| (t, m));
    let fields = serde_json::json!({
        "case": figure.case,
        "metric": figure.metric,
        "unit": figure.unit,
        "trempy": figure.trempy,
        "anchor": figure.anchor.clone().unwrap_or_else(|| "-".to_owned()),
        "anchor_value": figure.anchor_value,
        "ratio": figure.ratio(),
        "target": target,
        "target_met": met,
        "disturbed": disturbed,
    });
    if let Value::Object(fields) = fields {
        line.extend(fields);
    }
    line.extend(figure.extra.clone());
    Value::Object(line)
}

const HEADER: [&str; 7] = ["case", "metric", "TREMpy", "anchor", "anchor value", "ratio", "issue target (info only)"];
/// Columns of numbers, aligned right.
const RIGHT: [bool; 7] = [false, false, true, false, true, true, false];

/// The figures as an aligned table, a header and a rule above them.
pub fn render_table(rows: &[[String; 7]]) -> String {
    let header = HEADER.map(str::to_owned);
    let mut widths = [0usize; 7];
    for row in std::iter::once(&header).chain(rows) {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |row: &[String; 7]| {
        let mut out = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i > 0 {
                out.push_str(" | ");
            }
            let pad = " ".repeat(widths[i] - cell.chars().count());
            if RIGHT[i] {
                out.push_str(&pad);
                out.push_str(cell);
            } else {
                out.push_str(cell);
                out.push_str(&pad);
            }
        }
        out.trim_end().to_owned()
    };
    let mut out = String::new();
    let _ = writeln!(out, "{}", line(&header));
    let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    let _ = writeln!(out, "{}", rule.join("-+-"));
    for row in rows {
        let _ = writeln!(out, "{}", line(row));
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn rates_ratios_and_sums_are_unknown_rather_than_wrong() {
        assert_eq!(rate(1000, Some(0.5)), Some(2000.0));
        assert_eq!(rate(1000, Some(0.0)), None);
        assert_eq!(rate(1000, None), None);
        assert_eq!(ratio(Some(3.0), Some(2.0)), Some(1.5));
        assert_eq!(ratio(Some(1.0), Some(3.0)), Some(0.33));
        assert_eq!(ratio(Some(1.0), Some(0.0)), None);
        assert_eq!(ratio(None, Some(1.0)), None);
        assert_eq!(sum(&[Some(1.0), Some(2.5)]), Some(3.5));
        assert_eq!(sum(&[Some(1.0), None]), None);
        assert_eq!(per_million(Some(2.0), 500_000), Some(4.0));
        assert_eq!(per_million(Some(2.0), 0), None);
        assert_eq!(mib(Some(2048)), Some(2.0));
        assert_eq!(mib(None), None);
    }

    #[test]
    fn cells_show_units_unknowns_targets_and_the_disturbed_mark() {
        let figure = Figure::new("txns", "catch-up", Unit::RowsPerS, Some(1234.4))
            .anchor("native", Some(1000.0))
            .target(">= 1.5x native", Some(false));
        assert_eq!(
            figure.cells(true),
            ["(!) txns", "catch-up", "1234 rows/s", "native", "1000 rows/s", "1.23", ">= 1.5x native: no"]
                .map(str::to_owned)
        );
        let lone = Figure::new("rss", "beam", Unit::CpuSPerMillion, None);
        assert_eq!(lone.cells(false), ["rss", "beam", "n/a", "-", "-", "-", "-"].map(str::to_owned));
        assert_eq!(Unit::Ms.cell(Some(12.345)), "12.3 ms");
    }

    #[test]
    fn json_lines_carry_the_context_the_figure_and_its_raw_measurements() {
        let context = RunContext {
            run_id: "R".to_owned(),
            quick: true,
            nproc: 2,
            mem_kb: 1,
            postgresql: "15".to_owned(),
            rabbitmq: "4".to_owned(),
            loadavg_start: "0.1 0.2 0.3".to_owned(),
        };
        let figure =
            Figure::new("c", "m", Unit::Ms, Some(2.0)).anchor("a", Some(4.0)).extra(serde_json::json!({"rows": 7}));
        let line = json_line(&context, &figure, Some("RabbitMQ restarted"));
        assert_eq!(line["run_id"], "R");
        assert_eq!(line["unit"], "ms");
        assert_eq!(line["ratio"], 0.5);
        assert_eq!(line["target_met"], Value::Null);
        assert_eq!(line["rows"], 7);
        assert_eq!(line["disturbed"], "RabbitMQ restarted");
    }

    #[test]
    fn the_table_aligns_text_left_and_numbers_right() {
        let rows = [[
            "a".to_owned(),
            "m".to_owned(),
            "1 ms".to_owned(),
            "x".to_owned(),
            "10 ms".to_owned(),
            "0.10".to_owned(),
            "-".to_owned(),
        ]];
        let table = render_table(&rows);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("case | metric | TREMpy | anchor | anchor value | ratio | issue target"));
        assert!(lines[1].starts_with("-----+--------+--------+"));
        assert_eq!(lines[2], "a    | m      |   1 ms | x      |        10 ms |  0.10 | -");
    }
}
