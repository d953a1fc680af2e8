//! Membership levels (SPEC §3).

use std::fmt;

/// A membership level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    Silver,
    Gold,
    Platinum,
    Diamond,
}

impl Level {
    /// Every level, lowest first.
    pub const ALL: [Level; 4] = [Level::Silver, Level::Gold, Level::Platinum, Level::Diamond];

    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Silver => "silver",
            Level::Gold => "gold",
            Level::Platinum => "platinum",
            Level::Diamond => "diamond",
        }
    }

    /// Parses a stored name.
    pub fn from_db(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|l| l.as_str() == name)
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
