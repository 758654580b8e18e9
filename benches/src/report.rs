//! The output contract of every `tessera-bench` subcommand: each figure with
//! its ceiling from the same run and the ratio; `--json` prints
//! `{"figures": {NAME: {"value", "unit", "ceiling", "ratio"}}}`.

use serde::Serialize;
use std::collections::BTreeMap;

/// One measured figure.
#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    pub value: f64,
    pub unit: String,
    /// The reference measured in the same run (`null` when there is none).
    pub ceiling: Option<f64>,
    /// value / ceiling (`null` without a ceiling).
    pub ratio: Option<f64>,
    #[serde(skip)]
    pub note: String,
}

/// All figures of a run, in insertion order for the table.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub figures: BTreeMap<String, Figure>,
    #[serde(skip)]
    order: Vec<String>,
}

impl Report {
    /// Records a figure (and prints it at once on stderr, so long runs show
    /// progress).
    pub fn add(
        &mut self,
        name: &str,
        value: f64,
        unit: &str,
        ceiling: Option<f64>,
        note: impl Into<String>,
    ) {
        let ratio = ceiling.filter(|c| *c > 0.0).map(|c| value / c);
        let f = Figure {
            value,
            unit: unit.into(),
            ceiling,
            ratio,
            note: note.into(),
        };
        eprintln!("  {}", line(name, &f));
        self.order.push(name.into());
        self.figures.insert(name.into(), f);
    }

    /// Replaces the ceiling (and ratio) of figure `name`, if it was
    /// recorded, and appends `note` to its note: a peer measured after the
    /// figures were taken.
    pub fn set_ceiling(&mut self, name: &str, ceiling: f64, note: &str) {
        if let Some(f) = self.figures.get_mut(name) {
            f.ceiling = Some(ceiling);
            f.ratio = (ceiling > 0.0).then(|| f.value / ceiling);
            f.note = format!("{}; {note}", f.note);
        }
    }

    /// The human-readable table.
    pub fn table(&self) -> String {
        let mut s = format!(
            "{:<28} {:>14} {:<8} {:>14} {:>7}  {}\n",
            "figure", "value", "unit", "ceiling", "ratio", "ceiling is"
        );
        for name in &self.order {
            s.push_str(&line(name, &self.figures[name]));
            s.push('\n');
        }
        s
    }
}

fn line(name: &str, f: &Figure) -> String {
    let c = f.ceiling.map_or("-".to_string(), |c| format!("{c:.1}"));
    let r = f.ratio.map_or("-".to_string(), |r| format!("{r:.2}"));
    format!(
        "{:<28} {:>14.1} {:<8} {:>14} {:>7}  {}",
        name, f.value, f.unit, c, r, f.note
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_measured_later_becomes_the_ceiling_of_known_figures_only() {
        let mut r = Report::default();
        r.add("put_4kib_c32", 2000.0, "ops/s", Some(270.0), "ours");
        r.set_ceiling("put_4kib_c32", 400.0, "peer");
        r.set_ceiling("get_16mib_c8", 600.0, "peer");
        let f = &r.figures["put_4kib_c32"];
        assert_eq!(f.ceiling, Some(400.0));
        assert_eq!(f.ratio, Some(5.0));
        assert_eq!(f.note, "ours; peer");
        assert!(!r.figures.contains_key("get_16mib_c8"));
        r.set_ceiling("put_4kib_c32", 0.0, "an idle peer");
        assert_eq!(r.figures["put_4kib_c32"].ratio, None);
    }
}
