//! Rules: when a proposal passes. A rule is one clause or several joined by `AND`; each
//! clause names a committee (the members with one role; none: every member) and the share
//! of that committee's weight that must vote yes, optionally with a quorum (the share that
//! must take part at all, abstentions counted).
//!
//! ```text
//!   2/3                                   two thirds of all members' weight votes yes
//!   maintainers 2/3 AND contributors majority
//!   contributors 1/3 quorum=1/2           a third says yes, and half takes part
//! ```
//!
//! Shares are of the **eligible** weight (every member of the committee when the proposal
//! was made), not of the votes cast: yes votes only ever add up, so a proposal is decided
//! the moment enough members said yes (or too many said no for it ever to pass), and no
//! later vote can undo that.

use std::{fmt, str::FromStr};

use crate::{Error, Result};

/// Most clauses in one rule.
pub const MAX_CLAUSES: usize = 16;
/// Largest denominator of a fraction.
pub const MAX_DENOMINATOR: u32 = 1000;

/// A fraction `n/d` with `0 < n ≤ d ≤ 1000`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fraction {
    n: u32,
    d: u32,
}

impl Fraction {
    /// `n/d`, if `0 < n ≤ d ≤ 1000`.
    pub fn new(n: u32, d: u32) -> Result<Self> {
        if n == 0 || n > d || d > MAX_DENOMINATOR {
            return Err(Error::Rule(format!(
                "{n}/{d}: a share is N/M with 0 < N ≤ M ≤ {MAX_DENOMINATOR}"
            )));
        }
        Ok(Self { n, d })
    }

    /// Whether `part` is at least this share of `whole`.
    pub fn reached(&self, part: u64, whole: u64) -> bool {
        u128::from(part) * u128::from(self.d) >= u128::from(self.n) * u128::from(whole)
    }
}

impl fmt::Display for Fraction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.n, self.d)
    }
}

impl FromStr for Fraction {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let (n, d) = s
            .split_once('/')
            .ok_or_else(|| Error::Rule(format!("{}: not a share N/M", sov_core::quote(s))))?;
        let num = |x: &str| {
            x.trim()
                .parse::<u32>()
                .map_err(|_| Error::Rule(format!("{}: not a share N/M", sov_core::quote(s))))
        };
        Self::new(num(n)?, num(d)?)
    }
}

/// How much yes a clause needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Threshold {
    /// At least this share of the eligible weight.
    AtLeast(Fraction),
    /// More than half of the eligible weight.
    Majority,
}

impl Threshold {
    /// Whether `yes` out of `eligible` meets it.
    pub fn reached(&self, yes: u64, eligible: u64) -> bool {
        match self {
            Threshold::AtLeast(f) => f.reached(yes, eligible),
            Threshold::Majority => u128::from(yes) * 2 > u128::from(eligible),
        }
    }
}

impl fmt::Display for Threshold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Threshold::AtLeast(x) if *x == Fraction { n: 1, d: 1 } => f.write_str("unanimous"),
            Threshold::AtLeast(x) => x.fmt(f),
            Threshold::Majority => f.write_str("majority"),
        }
    }
}

/// One condition of a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Clause {
    /// The role whose members vote in it (`None`: every member).
    pub committee: Option<String>,
    /// The yes weight it needs.
    pub threshold: Threshold,
    /// The weight that must take part (yes, no or abstain), if any.
    pub quorum: Option<Fraction>,
}

impl fmt::Display for Clause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(c) = &self.committee {
            write!(f, "{c} ")?;
        }
        write!(f, "{}", self.threshold)?;
        if let Some(q) = self.quorum {
            write!(f, " quorum={q}")?;
        }
        Ok(())
    }
}

/// Clauses that must all hold for a proposal to pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The clauses (at least one).
    pub clauses: Vec<Clause>,
}

impl Rule {
    /// The committees the rule names (roles), each once.
    pub fn committees(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self
            .clauses
            .iter()
            .filter_map(|c| c.committee.as_deref())
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, c) in self.clauses.iter().enumerate() {
            if i > 0 {
                f.write_str(" AND ")?;
            }
            c.fmt(f)?;
        }
        Ok(())
    }
}

fn threshold(token: &str) -> Option<Result<Threshold>> {
    match token.to_ascii_lowercase().as_str() {
        "majority" => Some(Ok(Threshold::Majority)),
        "unanimous" | "all" => Some(Ok(Threshold::AtLeast(Fraction { n: 1, d: 1 }))),
        t if t.contains('/') => Some(t.parse().map(Threshold::AtLeast)),
        _ => None,
    }
}

fn clause(text: &str) -> Result<Clause> {
    let tokens: Vec<&str> = text.split_whitespace().collect();
    let bad = || {
        Error::Rule(format!(
            "{}: a clause is [ROLE] N/M|majority|unanimous [quorum=N/M]",
            sov_core::quote(text)
        ))
    };
    let (committee, rest) = match tokens.first() {
        None => return Err(bad()),
        Some(t) if threshold(t).is_some() => (None, &tokens[..]),
        Some(t) => {
            crate::group::check_role(t)?;
            (Some((*t).to_owned()), &tokens[1..])
        }
    };
    let (t, rest) = rest.split_first().ok_or_else(bad)?;
    let threshold = threshold(t).ok_or_else(bad)??;
    let quorum = match rest {
        [] => None,
        [q] => Some(
            q.strip_prefix("quorum=")
                .ok_or_else(bad)?
                .parse::<Fraction>()?,
        ),
        _ => return Err(bad()),
    };
    Ok(Clause {
        committee,
        threshold,
        quorum,
    })
}

impl FromStr for Rule {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        if s.len() > 512 {
            return Err(Error::Rule("a rule is at most 512 characters".into()));
        }
        let mut clauses = Vec::new();
        let mut current = Vec::new();
        for word in s.split_whitespace() {
            if word.eq_ignore_ascii_case("and") || word == "&&" {
                clauses.push(clause(&current.join(" "))?);
                current.clear();
            } else {
                current.push(word);
            }
        }
        clauses.push(clause(&current.join(" "))?);
        if clauses.len() > MAX_CLAUSES {
            return Err(Error::Rule(format!("at most {MAX_CLAUSES} clauses")));
        }
        Ok(Rule { clauses })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_parse_and_print_back() {
        for (input, shown) in [
            ("2/3", "2/3"),
            (
                "maintainers 2/3 AND contributors majority",
                "maintainers 2/3 AND contributors majority",
            ),
            ("contributors 1/3 quorum=1/2", "contributors 1/3 quorum=1/2"),
            ("all", "unanimous"),
            ("ops 2/3 && data Majority", "ops 2/3 AND data majority"),
        ] {
            let r: Rule = input.parse().unwrap();
            assert_eq!(r.to_string(), shown);
            assert_eq!(r.to_string().parse::<Rule>().unwrap(), r);
        }
    }

    #[test]
    fn nonsense_rules_are_refused_with_the_reason() {
        for bad in [
            "",
            "AND",
            "2/3 AND",
            "3/2",
            "0/3",
            "1/0",
            "x",
            "ops",
            "ops 2/3 extra",
            "2/3 quorum=5/4",
            "1/1001",
        ] {
            assert!(bad.parse::<Rule>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn thresholds_are_exact() {
        let two_thirds = Threshold::AtLeast(Fraction::new(2, 3).unwrap());
        assert!(!two_thirds.reached(1, 3));
        assert!(two_thirds.reached(2, 3));
        assert!(!two_thirds.reached(6, 10));
        assert!(two_thirds.reached(7, 10));
        assert!(!Threshold::Majority.reached(1, 2));
        assert!(Threshold::Majority.reached(2, 3));
        assert!(Threshold::Majority.reached(u64::MAX, u64::MAX));
    }
}
