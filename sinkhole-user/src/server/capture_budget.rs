//! What the capture thread may hold at once: the loop reserves a message's bytes before it
//! hands the message over and releases them when the outcome comes back. Past the budget the
//! client hears 451 (try later) instead of the daemon's memory growing with every sender.

/// Message bytes the capture thread may hold at once.
pub const MAX_IN_FLIGHT_BYTES: usize = 256 * 1024 * 1024;

/// Messages with the capture thread, and the bytes they hold.
#[derive(Debug)]
pub struct CaptureBudget {
    messages: usize,
    bytes: usize,
    max_bytes: usize,
}

impl CaptureBudget {
    pub fn new(max_bytes: usize) -> CaptureBudget {
        CaptureBudget {
            messages: 0,
            bytes: 0,
            max_bytes,
        }
    }

    /// Reserves room for a message of `bytes`; false (nothing reserved) when it does not fit.
    pub fn try_reserve(&mut self, bytes: usize) -> bool {
        if self.bytes + bytes > self.max_bytes {
            return false;
        }
        self.messages += 1;
        self.bytes += bytes;
        true
    }

    /// A reserved message of `bytes` is back from the capture thread (or was never handed
    /// over).
    pub fn release(&mut self, bytes: usize) {
        self.messages -= 1;
        self.bytes -= bytes;
    }

    /// No message is with the capture thread.
    pub fn is_idle(&self) -> bool {
        self.messages == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserves_up_to_the_budget_and_no_further() {
        let mut budget = CaptureBudget::new(100);
        assert!(budget.is_idle());
        assert!(budget.try_reserve(60));
        assert!(!budget.try_reserve(41), "over the budget");
        assert!(budget.try_reserve(40), "exactly the budget");
        assert!(!budget.try_reserve(1));
        budget.release(60);
        assert!(!budget.is_idle());
        assert!(budget.try_reserve(60));
    }

    #[test]
    fn idle_counts_messages_not_bytes() {
        let mut budget = CaptureBudget::new(100);
        assert!(
            budget.try_reserve(0),
            "an empty message still goes to the thread"
        );
        assert!(!budget.is_idle());
        budget.release(0);
        assert!(budget.is_idle());
    }
}
