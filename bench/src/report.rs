//! The benchmark's report: a table (Markdown, printed and written to
//! `table.md`), the same numbers as JSON (`report.json`) and a chart of
//! throughput and latency by scenario (`chart.svg`, plain SVG written here).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

use super::cpu::{TreesUsage, Usage};
use super::generator::{Latency, RunResult};
use super::reference::Reference;
use super::xa::XaReference;

/// Row names the targets look for.
pub const UNIFORM: &str = "uniform";
pub const UNIFORM_HALF: &str = "uniform @ half load";
pub const SAME_PARTITION: &str = "same-partition";
pub const HOT_CREDIT: &str = "hot-credit";
pub const HOT_DEBIT: &str = "hot-debit";
pub const IN_FLIGHT: &str = "10k in flight";
/// The best uniform load again on a cluster twice as wide.
pub const SCALE_OUT: &str = "uniform, 6 participants + 2 coordinators";

/// How much more than before the flood a service may hold once the memory
/// row's connections closed, MB, for its memory to count as returned.
pub const RETURNED_SLACK_MB: f64 = 10.0;

/// One measured scenario.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub scenario: String,
    pub result: RunResult,
    /// Committed per second over the reference's best transfers per second.
    pub ratio: Option<f64>,
    /// Peak resident memory during the run, MB, by process name.
    pub rss_mb: BTreeMap<String, f64>,
    /// The memory row only: resident memory just before the run and once
    /// its connections closed and the services had time to give memory
    /// back, MB, by process name (empty for the other rows).
    pub rss_before_mb: BTreeMap<String, f64>,
    pub rss_after_mb: BTreeMap<String, f64>,
    /// CPU use of the machine during the run, ours and others'.
    pub cpu: Usage,
    /// CPU of every process of the cluster (not the load generator) in
    /// the measured window, by process tree.
    pub cluster_cpu: TreesUsage,
    /// `cluster_cpu` per committed operation, microseconds.
    pub cpu_us_per_tx: Option<f64>,
    /// The row against both references.
    pub ratios: Ratios,
}

/// A row against the references of the same run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Ratios {
    /// CPU per transfer over pgbench's (the server's CPU per transfer at
    /// pgbench's best client count).
    pub cpu_vs_pgbench: Option<f64>,
    /// Committed per second over the XA reference's best.
    pub tps_vs_xa: Option<f64>,
    /// CPU per transfer over the XA reference's (its two servers').
    pub cpu_vs_xa: Option<f64>,
}

/// One target of `product.md`, checked against this run.
#[derive(Debug, Clone, Serialize)]
pub struct TargetCheck {
    pub target: String,
    pub wanted: String,
    pub measured: String,
    pub met: bool,
}

/// Everything one benchmark run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub started_at: String,
    /// Free-form facts about the machine and settings (cpus, memory,
    /// seconds per scenario, Postgres durability settings, setup time, ...).
    pub settings: BTreeMap<String, String>,
    pub reference: Option<Reference>,
    /// The second reference: a plain XA transfer across two servers.
    pub xa: Option<XaReference>,
    pub rows: Vec<Row>,
    pub targets: Vec<TargetCheck>,
}

impl Report {
    /// The reference's best transfers per second.
    pub fn reference_tps(&self) -> Option<f64> {
        self.reference.as_ref().map(|r| r.best.tps)
    }

    /// pgbench's CPU per transfer at its best client count, microseconds.
    pub fn reference_cpu(&self) -> Option<f64> {
        self.reference.as_ref().and_then(|r| r.best.cpu_us_per_tx)
    }

    /// Sets every row's ratios to the references and evaluates the targets.
    pub fn finish(&mut self) {
        let reference = self.reference_tps();
        let reference_cpu = self.reference_cpu();
        let xa_tps = self.xa.as_ref().map(|x| x.best.tps);
        let xa_cpu = self.xa.as_ref().and_then(|x| x.best.cpu_us_per_tx);
        let over = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if b > 0.0 => Some(a / b),
            _ => None,
        };
        for row in &mut self.rows {
            let tps = Some(row.result.committed_per_s);
            row.ratio = over(tps, reference);
            row.ratios = Ratios {
                cpu_vs_pgbench: over(row.cpu_us_per_tx, reference_cpu),
                tps_vs_xa: over(tps, xa_tps),
                cpu_vs_xa: over(row.cpu_us_per_tx, xa_cpu),
            };
        }
        self.targets = targets(reference, reference_cpu, &self.rows);
    }

    /// The Markdown table.
    pub fn table(&self) -> String {
        let processes: Vec<String> = self
            .rows
            .iter()
            .flat_map(|r| r.rss_mb.keys().cloned())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut header: Vec<String> = [
            "scenario",
            "load",
            "tx/s",
            "p50 ms",
            "p99 ms",
            "p99.9 ms",
            "x ref",
            "x XA",
            "CPU µs/tx",
            "CPU x ref",
            "CPU x XA",
            "errors",
            "dropped",
            "other CPU %",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        header.extend(processes.iter().map(|p| format!("{p} MB")));
        let mut rows: Vec<Vec<String>> = Vec::new();
        let reference = self.reference_tps();
        let reference_cpu = self.reference_cpu();
        let xa_tps = self.xa.as_ref().map(|x| x.best.tps);
        let xa_cpu = self.xa.as_ref().and_then(|x| x.best.cpu_us_per_tx);
        let ratio = |a: f64, b: Option<f64>| b.filter(|b| *b > 0.0).map(|b| a / b);
        if let Some(r) = &self.reference {
            let cpu = r.best.cpu_us_per_tx;
            let mut cells = vec![
                "pgbench reference".to_string(),
                format!("{} clients, -j {}", r.best.clients, r.best.threads),
                format!("{:.0}", r.best.tps),
                ms(r.best.latency.p50_ms),
                ms(r.best.latency.p99_ms),
                ms(r.best.latency.p999_ms),
                "1.00".into(),
                x(ratio(r.best.tps, xa_tps)),
                us(cpu),
                x(cpu.and_then(|c| ratio(c, reference_cpu))),
                x(cpu.and_then(|c| ratio(c, xa_cpu))),
                r.best.failed.to_string(),
                "-".into(),
                format!("{:.0}", r.best.cpu.other_pct),
            ];
            cells.extend(processes.iter().map(|_| "-".to_string()));
            rows.push(cells);
        }
        if let Some(r) = &self.xa {
            let cpu = r.best.cpu_us_per_tx;
            let mut cells = vec![
                "XA reference (2 servers)".to_string(),
                format!("{} clients", r.best.clients),
                format!("{:.0}", r.best.tps),
                ms(r.best.latency.p50_ms),
                ms(r.best.latency.p99_ms),
                ms(r.best.latency.p999_ms),
                x(ratio(r.best.tps, reference)),
                "1.00".into(),
                us(cpu),
                x(cpu.and_then(|c| ratio(c, reference_cpu))),
                x(cpu.and_then(|c| ratio(c, xa_cpu))),
                r.best.failed.to_string(),
                "-".into(),
                format!("{:.0}", r.best.cpu.other_pct),
            ];
            cells.extend(processes.iter().map(|_| "-".to_string()));
            rows.push(cells);
        }
        for row in &self.rows {
            let res = &row.result;
            let mut cells = vec![
                row.scenario.clone(),
                res.load.to_string(),
                format!("{:.0}", res.committed_per_s),
                ms(res.latency.p50_ms),
                ms(res.latency.p99_ms),
                ms(res.latency.p999_ms),
                x(row.ratio),
                x(row.ratios.tps_vs_xa),
                us(row.cpu_us_per_tx),
                x(row.ratios.cpu_vs_pgbench),
                x(row.ratios.cpu_vs_xa),
                res.outcomes.errors().to_string(),
                if matches!(res.load, super::generator::Load::Open { .. }) {
                    res.dropped.to_string()
                } else {
                    "-".into()
                },
                format!("{:.0}", row.cpu.other_pct),
            ];
            cells.extend(processes.iter().map(|p| {
                row.rss_mb
                    .get(p)
                    .map_or("-".into(), |mb| format!("{mb:.1}"))
            }));
            rows.push(cells);
        }
        let mut out = markdown(&header, &rows);
        let cpus = self.rows.first().map_or(1, |r| r.cpu.cpus);
        let _ = writeln!(
            out,
            "\ntx/s: committed per second. Latency of every answer, from when the request was due. \
             x ref, x XA: tx/s over the pgbench and the XA reference's. \
             CPU µs/tx: CPU time (user + system, from /proc) of every process of the cluster \
             (coordinators, participants, Postgres servers with their backends, etcd; not the \
             load generator) in the measured window, per committed operation; for the references, \
             their Postgres servers' (one for pgbench, two for XA). CPU x ref, CPU x XA: that over \
             the references' CPU per transfer. \
             other CPU %: CPU taken by processes outside this benchmark during the run \
             (100 = one of the {cpus} CPUs), noise in these numbers."
        );
        let shares: Vec<String> = self
            .rows
            .iter()
            .map(|r| {
                let per: Vec<String> = r
                    .cluster_cpu
                    .pct_by_process
                    .iter()
                    .map(|(p, pct)| format!("{p} {pct:.0}"))
                    .collect();
                format!("- {} ({}): {}", r.scenario, r.result.load, per.join(", "))
            })
            .collect();
        if !shares.is_empty() {
            out.push_str("\nCPU by process tree in the measured window (100 = one CPU):\n");
            for line in shares {
                out.push_str(&line);
                out.push('\n');
            }
        }
        for r in self.rows.iter().filter(|r| !r.rss_after_mb.is_empty()) {
            let mb = |m: &BTreeMap<String, f64>, p: &str| {
                m.get(p).map_or("-".into(), |v| format!("{v:.1}"))
            };
            let per: Vec<String> = r
                .rss_after_mb
                .keys()
                .map(|p| {
                    format!(
                        "{p} {} / {} / {}",
                        mb(&r.rss_before_mb, p),
                        mb(&r.rss_mb, p),
                        mb(&r.rss_after_mb, p)
                    )
                })
                .collect();
            let _ = writeln!(
                out,
                "
Resident MB before / at the peak / once the connections closed, {} ({}): {}",
                r.scenario,
                r.result.load,
                per.join(", ")
            );
        }
        let errors: Vec<String> = self
            .rows
            .iter()
            .filter(|r| r.result.outcomes.errors() > 0 || r.result.late > 0)
            .map(|r| {
                let o = &r.result.outcomes;
                let codes: Vec<String> = o.codes.iter().map(|(c, n)| format!("{c} {n}")).collect();
                format!(
                    "- {} ({}): 422/404 {}, 409 {}, 202 {}, 5xx {}, other {}, timeouts {}, transport {}; late {}; codes: {}",
                    r.scenario,
                    r.result.load,
                    o.refused,
                    o.conflict,
                    o.pending,
                    o.server_error,
                    o.other,
                    o.timeouts,
                    o.transport_errors,
                    r.result.late,
                    codes.join(", ")
                )
            })
            .collect();
        if !errors.is_empty() {
            out.push_str("\nErrors (every answer that is not 200 committed):\n");
            for e in errors {
                out.push_str(&e);
                out.push('\n');
            }
        }
        if !self.targets.is_empty() {
            out.push_str("\nTargets (product.md):\n");
            for t in &self.targets {
                let _ = writeln!(
                    out,
                    "- [{}] {}: wanted {}, measured {}",
                    if t.met { "met" } else { "NOT met" },
                    t.target,
                    t.wanted,
                    t.measured
                );
            }
        }
        out
    }

    /// Writes `report.json`, `table.md` and `chart.svg` into `dir`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::write(
            dir.join("report.json"),
            serde_json::to_string_pretty(self)? + "\n",
        )?;
        std::fs::write(dir.join("table.md"), self.table())?;
        std::fs::write(dir.join("chart.svg"), self.chart())?;
        Ok(())
    }

    /// Throughput (left) and latency percentiles on a log scale (right), one
    /// line per scenario, the reference first.
    pub fn chart(&self) -> String {
        struct Bar {
            label: String,
            tps: f64,
            lat: Latency,
            reference: bool,
        }
        let mut bars = Vec::new();
        if let Some(r) = &self.reference {
            bars.push(Bar {
                label: format!("pgbench reference ({} clients)", r.best.clients),
                tps: r.best.tps,
                lat: r.best.latency,
                reference: true,
            });
        }
        if let Some(r) = &self.xa {
            bars.push(Bar {
                label: format!("XA reference ({} clients)", r.best.clients),
                tps: r.best.tps,
                lat: r.best.latency,
                reference: true,
            });
        }
        for row in &self.rows {
            bars.push(Bar {
                label: format!("{} ({})", row.scenario, row.result.load),
                tps: row.result.committed_per_s,
                lat: row.result.latency,
                reference: false,
            });
        }
        let (label_w, panel_w, gap, top, line_h) = (300.0, 380.0, 60.0, 70.0, 30.0);
        let width = label_w + panel_w + gap + panel_w + 170.0;
        let height = top + line_h * bars.len().max(1) as f64 + 60.0;
        let x1 = label_w;
        let x2 = label_w + panel_w + gap;
        let bottom = top + line_h * bars.len() as f64;
        let reference = self.reference_tps();
        let max_tps = bars
            .iter()
            .map(|b| b.tps)
            .chain(reference.map(|r| 3.0 * r))
            .fold(1.0, f64::max)
            * 1.05;
        let tx = |v: f64| x1 + v / max_tps * panel_w;
        // Latency axis: log10 from 0.1 ms to the largest p99.9 (at least 100 ms).
        let max_ms = bars
            .iter()
            .map(|b| b.lat.p999_ms)
            .fold(100.0, f64::max)
            .log10()
            .ceil();
        let min_ms = -1.0;
        let lx = |v: f64| x2 + (v.max(0.1).log10() - min_ms) / (max_ms - min_ms) * panel_w;

        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(
            s,
            r#"<rect width="100%" height="100%" fill="white"/><text x="10" y="22" font-size="16" font-weight="bold">Wallet benchmark {}</text>"#,
            esc(&self.started_at)
        );
        let _ = writeln!(
            s,
            r#"<text x="{x1}" y="{}" font-weight="bold">committed per second</text><text x="{x2}" y="{}" font-weight="bold">latency, ms (log scale): p50, p99, p99.9</text>"#,
            top - 25.0,
            top - 25.0
        );
        // Grid lines.
        for i in 0..=4 {
            let v = max_tps / 1.05 * i as f64 / 4.0;
            let x = tx(v);
            let _ = writeln!(
                s,
                r##"<line x1="{x:.1}" y1="{top}" x2="{x:.1}" y2="{bottom}" stroke="#ddd"/><text x="{x:.1}" y="{:.1}" text-anchor="middle" fill="#555">{v:.0}</text>"##,
                bottom + 15.0
            );
        }
        let mut e = min_ms;
        while e <= max_ms {
            let v = 10f64.powf(e);
            let x = lx(v);
            let _ = writeln!(
                s,
                r##"<line x1="{x:.1}" y1="{top}" x2="{x:.1}" y2="{bottom}" stroke="#ddd"/><text x="{x:.1}" y="{:.1}" text-anchor="middle" fill="#555">{}</text>"##,
                bottom + 15.0,
                if v < 1.0 {
                    format!("{v:.1}")
                } else {
                    format!("{v:.0}")
                }
            );
            e += 1.0;
        }
        for (i, b) in bars.iter().enumerate() {
            let y = top + line_h * i as f64;
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
                x1 - 8.0,
                y + line_h * 0.6,
                esc(&b.label)
            );
            let fill = if b.reference { "#888" } else { "#3a7bd5" };
            let _ = writeln!(
                s,
                r#"<rect x="{x1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{fill}"/><text x="{:.1}" y="{:.1}">{:.0}</text>"#,
                y + 4.0,
                (tx(b.tps) - x1).max(0.5),
                line_h - 8.0,
                tx(b.tps) + 4.0,
                y + line_h * 0.6,
                b.tps
            );
            let h = (line_h - 8.0) / 3.0;
            for (k, (v, color)) in [
                (b.lat.p50_ms, "#7fc97f"),
                (b.lat.p99_ms, "#fdc086"),
                (b.lat.p999_ms, "#e7298a"),
            ]
            .iter()
            .enumerate()
            {
                let _ = writeln!(
                    s,
                    r#"<rect x="{x2}" y="{:.1}" width="{:.1}" height="{h:.1}" fill="{color}"><title>{v:.2} ms</title></rect>"#,
                    y + 4.0 + h * k as f64,
                    (lx(*v) - x2).max(0.5)
                );
            }
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{:.1}" font-size="10">{:.1} / {:.1} / {:.1}</text>"#,
                lx(b.lat.p999_ms) + 4.0,
                y + line_h * 0.6,
                b.lat.p50_ms,
                b.lat.p99_ms,
                b.lat.p999_ms
            );
        }
        if let Some(r) = reference {
            let x = tx(3.0 * r);
            let _ = writeln!(
                s,
                r##"<line x1="{x:.1}" y1="{}" x2="{x:.1}" y2="{bottom}" stroke="#c00" stroke-dasharray="5,4"/><text x="{x:.1}" y="{:.1}" fill="#c00" text-anchor="middle">3x reference</text>"##,
                top - 5.0,
                top - 8.0
            );
        }
        let x = lx(25.0);
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{}" x2="{x:.1}" y2="{bottom}" stroke="#c00" stroke-dasharray="5,4"/><text x="{x:.1}" y="{:.1}" fill="#c00" text-anchor="middle">25 ms</text>"##,
            top - 5.0,
            top - 8.0
        );
        s.push_str("</svg>\n");
        s
    }
}

/// The targets of `product.md` that this run can check. `reference_cpu`
/// is pgbench's CPU per transfer.
pub fn targets(
    reference: Option<f64>,
    reference_cpu: Option<f64>,
    rows: &[Row],
) -> Vec<TargetCheck> {
    let best = |name: &str| {
        rows.iter().filter(|r| r.scenario == name).max_by(|a, b| {
            a.result
                .committed_per_s
                .total_cmp(&b.result.committed_per_s)
        })
    };
    let closed = |name: &str, clients: usize| {
        rows.iter().find(|r| {
            r.scenario == name && r.result.load == super::generator::Load::Closed { clients }
        })
    };
    let mut out = Vec::new();
    let uniform = best(UNIFORM).map(|r| r.result.committed_per_s);
    if let (Some(u), Some(r)) = (uniform, reference) {
        for (factor, when) in [(1.0, "now"), (3.0, "the goal beyond it")] {
            out.push(TargetCheck {
                target: format!("uniform cross-partition vs pgbench reference ({when})"),
                wanted: format!(">= {factor:.2}x ({:.0}/s)", factor * r),
                measured: format!("{:.2}x ({u:.0}/s vs {r:.0}/s)", u / r),
                met: u >= factor * r,
            });
        }
    }
    if let Some(one) = closed(UNIFORM, 1) {
        let p50 = one.result.latency.p50_ms;
        out.push(TargetCheck {
            target: "p50 of one client alone (uniform)".into(),
            wanted: "<= 3 ms".into(),
            measured: format!("{p50:.2} ms"),
            met: p50 <= 3.0 && one.result.outcomes.errors() == 0,
        });
    }
    if let Some(ref_cpu) = reference_cpu {
        let cpu_target = |row: Option<&Row>, what: &str, limit: f64| {
            let row = row?;
            let cpu = row.cpu_us_per_tx?;
            Some(TargetCheck {
                target: format!("CPU per committed cross-node transfer, {what}"),
                wanted: format!("<= {limit:.1}x pgbench ({:.0} µs)", limit * ref_cpu),
                measured: format!(
                    "{:.2}x ({cpu:.0} µs vs {ref_cpu:.0} µs, {})",
                    cpu / ref_cpu,
                    row.result.load
                ),
                met: cpu <= limit * ref_cpu,
            })
        };
        out.extend(cpu_target(
            best(UNIFORM),
            "at saturation (best uniform)",
            1.5,
        ));
        out.extend(cpu_target(closed(UNIFORM, 16), "at 16 clients", 3.0));
    }
    if let Some(h) = best(UNIFORM_HALF) {
        let p99 = h.result.latency.p99_ms;
        out.push(TargetCheck {
            target: "p99 at half the best uniform load (open loop)".into(),
            wanted: "<= 25 ms".into(),
            measured: format!("{p99:.1} ms at {}", h.result.load),
            met: p99 <= 25.0 && h.result.outcomes.errors() == 0,
        });
    }
    for name in [HOT_CREDIT, HOT_DEBIT] {
        if let (Some(hot), Some(u)) = (best(name), uniform) {
            let t = hot.result.committed_per_s;
            out.push(TargetCheck {
                target: format!("{name} vs uniform"),
                wanted: format!(">= 0.50x ({:.0}/s)", u / 2.0),
                measured: format!("{:.2}x ({t:.0}/s)", t / u),
                met: t >= u / 2.0,
            });
        }
    }
    if let (Some(wide), Some(base)) = (best(SCALE_OUT), best(UNIFORM)) {
        if let (Some(w), Some(b)) = (wide.cpu_us_per_tx, base.cpu_us_per_tx) {
            out.push(TargetCheck {
                target:
                    "CPU per transfer, twice the nodes (6 participants, 2 coordinators) vs 3 and 1"
                        .into(),
                wanted: format!("within 10% (<= {:.0} µs)", 1.1 * b),
                measured: format!(
                    "{:.2}x ({w:.0} µs vs {b:.0} µs, {})",
                    w / b,
                    wide.result.load
                ),
                met: w <= 1.1 * b,
            });
        }
    }
    if let Some(r) = best(IN_FLIGHT) {
        let worst = r
            .rss_mb
            .iter()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(k, v)| (k.clone(), *v));
        if let Some((who, mb)) = worst {
            out.push(TargetCheck {
                target: "resident memory at 10,000 transfers in flight".into(),
                wanted: "< 100 MB each (coordinator, participants)".into(),
                measured: format!(
                    "largest {who} {mb:.1} MB; in flight mean {:.0}, max {}",
                    r.result.in_flight_mean, r.result.in_flight_max
                ),
                met: mb < 100.0 && r.result.in_flight_max >= 10_000,
            });
        }
        // Returned: once the connections closed, each service holds at most
        // RETURNED_SLACK_MB more than just before the flood.
        let kept = r
            .rss_after_mb
            .iter()
            .filter_map(|(k, after)| Some((k.clone(), after - r.rss_before_mb.get(k)?)))
            .max_by(|a, b| a.1.total_cmp(&b.1));
        if let Some((who, kept)) = kept {
            out.push(TargetCheck {
                target: "memory returned once those connections closed".into(),
                wanted: format!("each service within {RETURNED_SLACK_MB} MB of its size before"),
                measured: format!(
                    "most kept: {who} {kept:+.1} MB ({:.1} MB before, {:.1} MB after)",
                    r.rss_before_mb.get(&who).copied().unwrap_or_default(),
                    r.rss_after_mb.get(&who).copied().unwrap_or_default()
                ),
                met: kept <= RETURNED_SLACK_MB,
            });
        }
    }
    out
}

fn x(v: Option<f64>) -> String {
    v.map_or("-".into(), |r| format!("{r:.2}"))
}

fn us(v: Option<f64>) -> String {
    v.map_or("-".into(), |u| format!("{u:.0}"))
}

fn ms(v: f64) -> String {
    if v < 10.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.1}")
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn markdown(header: &[String], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.len());
        }
    }
    let line = |cells: &[String]| {
        let mut l = String::from("|");
        for (i, c) in cells.iter().enumerate() {
            // Text left, numbers right.
            if i < 2 {
                let _ = write!(l, " {c:<w$} |", w = widths[i]);
            } else {
                let _ = write!(l, " {c:>w$} |", w = widths[i]);
            }
        }
        l.push('\n');
        l
    };
    let mut out = line(header);
    out.push('|');
    for (i, w) in widths.iter().enumerate() {
        out.push_str(&"-".repeat(w + 1));
        out.push_str(if i < 2 { "-|" } else { ":|" });
    }
    out.push('\n');
    for r in rows {
        out.push_str(&line(r));
    }
    out
}
