//! `docs/METRICS.md` read as data, and a Prometheus text scrape read the same way, so a test can
//! hold the two side by side: every documented series is exported from the first scrape, and
//! nothing undocumented is.

use std::collections::{BTreeMap, BTreeSet};

/// One metric family: its type and label names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Family {
    /// `counter`, `gauge` or `histogram` (the exporter renders histograms as summaries).
    pub kind: String,
    pub labels: BTreeSet<String>,
}

/// The metrics tables of one `## ` section of `docs/METRICS.md` whose heading starts with
/// `section` (`Engine`, `Gateway`). A row is `| `name`[, `name`] | type | `label`[, ...] | ...`.
pub fn documented(markdown: &str, section: &str) -> BTreeMap<String, Family> {
    let mut out = BTreeMap::new();
    let mut inside = false;
    for line in markdown.lines() {
        if let Some(heading) = line.strip_prefix("## ") {
            inside = heading.starts_with(section);
            continue;
        }
        if !inside || !line.starts_with("| `") {
            continue;
        }
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // ["", names, type, labels, unit, meaning, ""]
        let (Some(names), Some(kind), Some(labels)) = (cells.get(1), cells.get(2), cells.get(3))
        else {
            continue;
        };
        let labels: BTreeSet<String> = ticked(labels).collect();
        for name in ticked(names) {
            out.insert(
                name,
                Family {
                    kind: (*kind).to_owned(),
                    labels: labels.clone(),
                },
            );
        }
    }
    out
}

/// The words written between backquotes.
fn ticked(cell: &str) -> impl Iterator<Item = String> + '_ {
    cell.split('`').skip(1).step_by(2).map(str::to_owned)
}

/// The families of a Prometheus text scrape, with the label names their samples carry
/// (a summary's `quantile` and a histogram's `le` left out).
pub fn exposed(scrape: &str) -> BTreeMap<String, Family> {
    let mut out: BTreeMap<String, Family> = BTreeMap::new();
    for line in scrape.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            if let (Some(name), Some(kind)) = (parts.next(), parts.next()) {
                let kind = if kind == "summary" { "histogram" } else { kind };
                out.insert(
                    name.to_owned(),
                    Family {
                        kind: kind.to_owned(),
                        labels: BTreeSet::new(),
                    },
                );
            }
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let series = line.split_whitespace().next().unwrap_or("");
        let (name, labels) = series.split_once('{').unwrap_or((series, ""));
        let family = ["_sum", "_count", "_bucket"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| out.contains_key(*f)))
            .unwrap_or(name);
        if let Some(f) = out.get_mut(family) {
            for pair in labels.trim_end_matches('}').split(',') {
                if let Some((label, _)) = pair.split_once('=')
                    && label != "quantile"
                    && label != "le"
                {
                    f.labels.insert(label.to_owned());
                }
            }
        }
    }
    out
}

/// Where the documented and the exported families differ, one line each; empty when they agree.
pub fn differences(
    documented: &BTreeMap<String, Family>,
    exposed: &BTreeMap<String, Family>,
) -> Vec<String> {
    let mut out = Vec::new();
    for (name, doc) in documented {
        match exposed.get(name) {
            None => out.push(format!("{name}: documented, not exported")),
            Some(seen) if seen != doc => {
                out.push(format!(
                    "{name}: documented as {doc:?}, exported as {seen:?}"
                ));
            }
            Some(_) => {}
        }
    }
    for name in exposed.keys().filter(|n| !documented.contains_key(*n)) {
        out.push(format!("{name}: exported, not documented"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "# M\n## Engine (x)\n| metric | type | labels |\n|---|---|---|\n\
        | `a_total` | counter | `pair` | n | m |\n| `b_seconds`, `c_seconds` | histogram | | s | m |\n\
        ## Gateway\n| `g_total` | counter | | n | m |\n";

    const SCRAPE: &str = "# TYPE a_total counter\na_total{pair=\"X\"} 0\n\
        # TYPE b_seconds summary\nb_seconds{quantile=\"0.5\"} 0\nb_seconds_sum 0\nb_seconds_count 0\n\
        # TYPE c_seconds summary\nc_seconds_sum 0\nc_seconds_count 0\n";

    #[test]
    fn a_matching_scrape_has_no_differences_and_each_kind_of_drift_is_named() {
        let doc = documented(DOC, "Engine");
        assert_eq!(doc.len(), 3, "{doc:?}");
        assert!(differences(&doc, &exposed(SCRAPE)).is_empty());
        let missing = SCRAPE.replace(
            "# TYPE c_seconds summary\nc_seconds_sum 0\nc_seconds_count 0\n",
            "",
        );
        assert_eq!(
            differences(&doc, &exposed(&missing)),
            ["c_seconds: documented, not exported"]
        );
        let extra = format!("{SCRAPE}# TYPE z gauge\nz 1\n");
        assert_eq!(
            differences(&doc, &exposed(&extra)),
            ["z: exported, not documented"]
        );
        let relabelled = SCRAPE.replace("{pair=", "{side=");
        assert_eq!(differences(&doc, &exposed(&relabelled)).len(), 1);
    }
}
