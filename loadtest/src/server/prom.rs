//! The lines of the Prometheus text format this generator reads: `name{label="value",...} value
//! [timestamp]`, with `#` comments (HELP, TYPE) skipped. What metrics-exporter-prometheus
//! writes, and the format's escapes in label values (`\\`, `\"`, `\n`).
//!
//! Written here rather than taken from a crate: the only one on crates.io (`prometheus-parse`)
//! brings regex and chrono for what fits in these few lines, and it would be the workspace's
//! first new dependency for a report.

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("line {line_no} of the metrics is not Prometheus text ({why}): {line:?}")]
pub struct ParseError {
    pub line_no: usize,
    pub line: String,
    pub why: &'static str,
}

/// Every sample of an exposition, in order. One malformed line fails the whole text: a scrape
/// is then recorded as failed, with the line, rather than read in part.
pub fn parse(text: &str) -> Result<Vec<Sample>, ParseError> {
    let mut samples = Vec::new();
    for (i, line) in text.lines().enumerate() {
        match parse_line(line) {
            Ok(Some(s)) => samples.push(s),
            Ok(None) => {}
            Err(why) => {
                return Err(ParseError {
                    line_no: i + 1,
                    line: line.chars().take(200).collect(),
                    why,
                });
            }
        }
    }
    Ok(samples)
}

/// A sample, or `None` for a blank or comment line.
pub fn parse_line(line: &str) -> Result<Option<Sample>, &'static str> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .ok_or("no value")?;
    let name = &line[..name_end];
    if !is_metric_name(name) {
        return Err("bad metric name");
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(after_brace) = rest.strip_prefix('{') {
        rest = parse_labels(after_brace, &mut labels)?;
    }
    let mut fields = rest.split_whitespace();
    let value = parse_value(fields.next().ok_or("no value")?)?;
    if let Some(ts) = fields.next() {
        ts.parse::<i64>().map_err(|_| "bad timestamp")?;
    }
    if fields.next().is_some() {
        return Err("text after the timestamp");
    }
    Ok(Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    }))
}

fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Reads `key="value",...}` into `labels`; returns what follows the closing brace.
fn parse_labels<'a>(
    mut s: &'a str,
    labels: &mut Vec<(String, String)>,
) -> Result<&'a str, &'static str> {
    loop {
        s = s.trim_start();
        if let Some(after) = s.strip_prefix('}') {
            return Ok(after);
        }
        let eq = s.find('=').ok_or("label without '='")?;
        let key = s[..eq].trim();
        if !is_metric_name(key) || key.contains(':') {
            return Err("bad label name");
        }
        let quoted = s[eq + 1..]
            .trim_start()
            .strip_prefix('"')
            .ok_or("label value not quoted")?;
        let (value, after) = unquote(quoted)?;
        labels.push((key.to_owned(), value));
        s = after.trim_start();
        if let Some(after_comma) = s.strip_prefix(',') {
            s = after_comma;
        } else if !s.starts_with('}') {
            return Err("labels not separated by ','");
        }
    }
}

/// The value up to the closing quote, unescaped, and what follows the quote.
fn unquote(s: &str) -> Result<(String, &str), &'static str> {
    let mut value = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((value, &s[i + 1..])),
            '\\' => match chars.next() {
                Some((_, 'n')) => value.push('\n'),
                Some((_, '\\')) => value.push('\\'),
                Some((_, '"')) => value.push('"'),
                _ => return Err("bad escape in a label value"),
            },
            c => value.push(c),
        }
    }
    Err("unterminated label value")
}

fn parse_value(s: &str) -> Result<f64, &'static str> {
    match s {
        "+Inf" | "Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => s.parse().map_err(|_| "bad value"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines as metrics-exporter-prometheus 0.18 renders the services' metrics.
    const EXPORTED: &str = "\
# HELP gateway_shed_total requests refused
# TYPE gateway_shed_total counter
gateway_shed_total{reason=\"in_flight\"} 12
gateway_shed_total{reason=\"queue_delay\"} 0

# TYPE gateway_verdict_seconds summary
gateway_verdict_seconds{quantile=\"0\"} 0.000412
gateway_verdict_seconds{quantile=\"0.99\"} 0.0123
gateway_verdict_seconds_sum 4.25
gateway_verdict_seconds_count 1000
engine_consumer_lag_records{pair=\"BTC-EUR\"} 3
gateway_connections 200
";

    #[test]
    fn reads_the_exporters_lines_and_skips_comments() {
        let samples = parse(EXPORTED).unwrap();
        assert_eq!(samples.len(), 8);
        assert_eq!(samples[0].name, "gateway_shed_total");
        assert_eq!(samples[0].label("reason"), Some("in_flight"));
        assert_eq!(samples[0].value, 12.0);
        assert_eq!(samples[3].label("quantile"), Some("0.99"));
        assert_eq!(samples[3].value, 0.0123);
        assert_eq!(samples[4].name, "gateway_verdict_seconds_sum");
        assert!(samples[4].labels.is_empty());
        assert_eq!(samples[6].label("pair"), Some("BTC-EUR"));
        assert_eq!(samples[7].value, 200.0);
    }

    #[test]
    fn label_values_unescape_and_may_hold_separators() {
        let s = parse_line(r#"m{a="x\"y",b="1,2}",c="back\\slash\nline",} 1 1700000000000"#)
            .unwrap()
            .unwrap();
        assert_eq!(
            s.labels,
            vec![
                ("a".to_owned(), "x\"y".to_owned()),
                ("b".to_owned(), "1,2}".to_owned()),
                ("c".to_owned(), "back\\slash\nline".to_owned()),
            ]
        );
        assert_eq!(s.value, 1.0);
    }

    #[test]
    fn special_values() {
        let v = |line: &str| parse_line(line).unwrap().unwrap().value;
        assert_eq!(v("m +Inf"), f64::INFINITY);
        assert_eq!(v("m -Inf"), f64::NEG_INFINITY);
        assert!(v("m NaN").is_nan());
        assert_eq!(v("m 1e-3"), 0.001);
        assert_eq!(v("m{} -2.5"), -2.5);
    }

    #[test]
    fn malformed_lines_fail_with_their_number() {
        for bad in [
            "m",
            "m{a=\"1\"}",
            "m{a=1} 2",
            "m{a=\"1} 2",
            "m{a=\"1\" b=\"2\"} 3",
            "m one",
            "m 1 2 3",
            "m 1 soon",
            "9m 1",
            "m{\"a\"=\"1\"} 1",
            "m{a=\"\\x\"} 1",
        ] {
            assert!(parse_line(bad).is_err(), "{bad:?} parsed");
        }
        let err = parse("ok 1\n# c\nbroken\n").unwrap_err();
        assert_eq!((err.line_no, err.line.as_str()), (3, "broken"));
    }
}
