//! Quarantine reason codes: the first rule a row fails, in the documented order.

/// Why a row was rejected. The order of the variants is the order the rules are checked in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    BrokenJson,
    MissingEventId,
    MissingEventTime,
    BadTimestamp,
    UnknownEventType,
    PriceNotNumber,
    NegativePrice,
    PurchaseWithoutOrderId,
    FutureEventTime,
    StaleEventTime,
    MissingAnonymousId,
    InvalidField,
    /// A source mapping's `_reject` said so (e.g. an app_id outside the allow-list).
    RejectedBySource,
    /// A source mapping returned no row for the line.
    UnmappedLine,
}

impl Reason {
    /// The rules of the canonical format: every reason but the last two, which only a source
    /// mapping gives.
    pub const NATIVE: &'static [Reason] = Reason::ALL.split_at(12).0;

    pub const ALL: [Reason; 14] = [
        Reason::BrokenJson,
        Reason::MissingEventId,
        Reason::MissingEventTime,
        Reason::BadTimestamp,
        Reason::UnknownEventType,
        Reason::PriceNotNumber,
        Reason::NegativePrice,
        Reason::PurchaseWithoutOrderId,
        Reason::FutureEventTime,
        Reason::StaleEventTime,
        Reason::MissingAnonymousId,
        Reason::InvalidField,
        Reason::RejectedBySource,
        Reason::UnmappedLine,
    ];

    pub fn code(self) -> &'static str {
        match self {
            Reason::BrokenJson => "broken_json",
            Reason::MissingEventId => "missing_event_id",
            Reason::MissingEventTime => "missing_event_time",
            Reason::BadTimestamp => "bad_timestamp",
            Reason::UnknownEventType => "unknown_event_type",
            Reason::PriceNotNumber => "price_not_number",
            Reason::NegativePrice => "negative_price",
            Reason::PurchaseWithoutOrderId => "purchase_without_order_id",
            Reason::FutureEventTime => "future_event_time",
            Reason::StaleEventTime => "stale_event_time",
            Reason::MissingAnonymousId => "missing_anonymous_id",
            Reason::InvalidField => "invalid_field",
            Reason::RejectedBySource => "rejected_by_source",
            Reason::UnmappedLine => "unmapped_line",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// Counts per reason, indexed by [`Reason::index`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReasonCounts(pub [u64; Reason::ALL.len()]);

impl ReasonCounts {
    pub fn add(&mut self, r: Reason) {
        self.0[r.index()] += 1;
    }
    pub fn merge(&mut self, other: &ReasonCounts) {
        for (a, b) in self.0.iter_mut().zip(other.0.iter()) {
            *a += b;
        }
    }
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }
    /// Non-zero counts, in rule order.
    pub fn nonzero(&self) -> impl Iterator<Item = (Reason, u64)> + '_ {
        Reason::ALL
            .into_iter()
            .map(|r| (r, self.0[r.index()]))
            .filter(|(_, n)| *n > 0)
    }
}
