//! `toolgate log`: the decision log read back, for an operator without a metrics stack.
//! `tail` prints the recent decisions one line each (coloured on a terminal); `stats` counts
//! them per rule and per tool, with deny rates and evaluation-time percentiles.

use clap::Subcommand;
use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use toolgate::audit::{Event, Line, SCHEMA};

/// `toolgate log ...`
#[derive(Subcommand)]
pub(crate) enum LogCommand {
    /// The most recent decisions (and outcomes), one line each.
    Tail {
        /// The decision log (`--decision-log` / `decision_log`).
        file: PathBuf,
        /// How many events.
        #[arg(short = 'n', long, default_value_t = 20)]
        lines: usize,
        /// Colour the verdicts: `auto` (when stdout is a terminal), `always`, `never`.
        #[arg(long, default_value = "auto")]
        color: String,
    },
    /// Counts per rule and per tool, deny rates, evaluation time (p50, p99), outcomes.
    Stats {
        /// The decision log.
        file: PathBuf,
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
}

pub(crate) fn log(command: LogCommand) -> ExitCode {
    let result = match command {
        LogCommand::Tail { file, lines, color } => tail(&file, lines, &color),
        LogCommand::Stats { file, json } => stats(&file, json),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("toolgate log: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Every event of the file, oldest first; lines of another schema or not JSON are counted
/// and skipped (a log written by another version, or cut by a crash).
fn read(file: &Path) -> anyhow::Result<(Vec<Event>, usize)> {
    let reader = std::io::BufReader::new(
        std::fs::File::open(file)
            .map_err(|e| anyhow::anyhow!("cannot read `{}`: {e}", file.display()))?,
    );
    let mut events = Vec::new();
    let mut skipped = 0;
    for line in reader.lines() {
        let line = line?;
        match serde_json::from_str::<Line>(&line) {
            Ok(parsed) if parsed.schema == SCHEMA => events.push(parsed.event),
            _ => skipped += 1,
        }
    }
    Ok((events, skipped))
}

fn tail(file: &Path, lines: usize, color: &str) -> anyhow::Result<()> {
    let (events, skipped) = read(file)?;
    let colour = match color {
        "always" => true,
        "never" => false,
        "auto" => std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
        other => anyhow::bail!("--color `{other}`: use auto, always or never"),
    };
    // Padded before it is coloured, so that the escapes do not count as width.
    let paint = |verdict: &str| -> String {
        let padded = format!("{verdict:<12}");
        if !colour {
            return padded;
        }
        let code = match verdict {
            "allow" | "ran" => "32",
            "deny" | "jsonrpc_error" | "gone" => "31",
            "rate_limited" | "require_approval" | "tool_error" | "timeout" => "33",
            _ => "36",
        };
        format!("\x1b[{code}m{padded}\x1b[0m")
    };
    let mut out = std::io::stdout().lock();
    for event in &events[events.len().saturating_sub(lines)..] {
        let text = match event {
            Event::Decision(d) => format!(
                "{}  {:<8} {} {:<28} {:<24} {} ({} µs)",
                d.time,
                d.grant,
                paint(&d.decision.verdict),
                d.tool,
                d.decision.rule,
                d.decision.reason,
                d.eval_us
            ),
            Event::Outcome(o) => format!(
                "{}  {:<8} {} {:<28} {:.1} ms",
                o.time,
                o.grant,
                paint(serde_json::to_value(o.outcome)?.as_str().unwrap_or("?")),
                o.tool,
                o.upstream_ms
            ),
            Event::Approval(a) => format!(
                "{}  {:<8} {} approval {} {}",
                a.time,
                a.grant,
                paint(&a.outcome),
                a.approval_id,
                a.by.as_deref().unwrap_or("")
            ),
            Event::Shadow(s) => format!(
                "{}  {:<8} {} {:<28} shadow {}: {} ({})",
                s.time,
                s.grant,
                paint(&s.would),
                s.tool,
                s.source,
                s.shadow.verdict,
                s.shadow.rule
            ),
        };
        if writeln!(out, "{text}").is_err() {
            break;
        }
    }
    if skipped > 0 {
        eprintln!("({skipped} line(s) not of schema {SCHEMA} skipped)");
    }
    Ok(())
}

#[derive(Default, serde::Serialize)]
struct Tally {
    calls: u64,
    denied: u64,
    deny_rate: f64,
    verdicts: BTreeMap<String, u64>,
    #[serde(skip)]
    eval_us: Vec<u64>,
    eval_p50_us: u64,
    eval_p99_us: u64,
}

impl Tally {
    fn add(&mut self, verdict: &str, eval_us: u64) {
        self.calls += 1;
        if verdict != "allow" {
            self.denied += 1;
        }
        *self.verdicts.entry(verdict.to_owned()).or_default() += 1;
        self.eval_us.push(eval_us);
    }

    fn finish(&mut self) {
        self.deny_rate = self.denied as f64 / self.calls.max(1) as f64;
        self.eval_us.sort_unstable();
        let at = |q: f64| {
            let i = ((self.eval_us.len() as f64 - 1.0) * q).round() as usize;
            self.eval_us.get(i).copied().unwrap_or(0)
        };
        (self.eval_p50_us, self.eval_p99_us) = (at(0.5), at(0.99));
    }
}

#[derive(Default, serde::Serialize)]
struct Stats {
    total: Tally,
    by_rule: BTreeMap<String, Tally>,
    by_tool: BTreeMap<String, Tally>,
    outcomes: BTreeMap<String, u64>,
    shadow: BTreeMap<String, u64>,
    approvals: BTreeMap<String, u64>,
    skipped_lines: usize,
}

fn stats(file: &Path, json: bool) -> anyhow::Result<()> {
    let (events, skipped) = read(file)?;
    let mut stats = Stats {
        skipped_lines: skipped,
        ..Stats::default()
    };
    for event in &events {
        match event {
            Event::Decision(d) => {
                let verdict = d.decision.verdict.as_str();
                stats.total.add(verdict, d.eval_us);
                stats
                    .by_rule
                    .entry(d.decision.rule.clone())
                    .or_default()
                    .add(verdict, d.eval_us);
                stats
                    .by_tool
                    .entry(d.tool.clone())
                    .or_default()
                    .add(verdict, d.eval_us);
            }
            Event::Outcome(o) => {
                let name = serde_json::to_value(o.outcome)?
                    .as_str()
                    .unwrap_or("?")
                    .to_owned();
                *stats.outcomes.entry(name).or_default() += 1;
            }
            Event::Shadow(s) => *stats.shadow.entry(s.would.clone()).or_default() += 1,
            Event::Approval(a) => *stats.approvals.entry(a.outcome.clone()).or_default() += 1,
        }
    }
    stats.total.finish();
    stats
        .by_rule
        .values_mut()
        .chain(stats.by_tool.values_mut())
        .for_each(Tally::finish);
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, &stats)?;
        writeln!(out)?;
        return Ok(());
    }
    let row = |out: &mut dyn Write, name: &str, t: &Tally| {
        writeln!(
            out,
            "{name:<32} {:>8} {:>8} {:>7.1}% {:>9} {:>9}",
            t.calls,
            t.denied,
            t.deny_rate * 100.0,
            t.eval_p50_us,
            t.eval_p99_us
        )
    };
    let header = |out: &mut dyn Write, what: &str| {
        writeln!(
            out,
            "{what:<32} {:>8} {:>8} {:>8} {:>9} {:>9}",
            "CALLS", "REFUSED", "RATE", "P50 µs", "P99 µs"
        )
    };
    header(&mut out, "RULE")?;
    for (rule, t) in &stats.by_rule {
        row(&mut out, rule, t)?;
    }
    writeln!(out)?;
    header(&mut out, "TOOL")?;
    for (tool, t) in &stats.by_tool {
        row(&mut out, tool, t)?;
    }
    writeln!(out)?;
    row(&mut out, "all", &stats.total)?;
    let joined = |m: &BTreeMap<String, u64>| {
        m.iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    writeln!(out, "outcomes: {}", joined(&stats.outcomes))?;
    if !stats.shadow.is_empty() {
        writeln!(out, "shadow: {}", joined(&stats.shadow))?;
    }
    if !stats.approvals.is_empty() {
        writeln!(out, "approvals: {}", joined(&stats.approvals))?;
    }
    if skipped > 0 {
        writeln!(out, "({skipped} line(s) not of schema {SCHEMA} skipped)")?;
    }
    Ok(())
}
