//! What the capture threads may hold at once: the loop reserves a place before it hands a
//! written message over and releases it when the outcome comes back. Past the budget the client
//! hears 451 (try later) instead of the threads' queues growing with every sender.
//!
//! Bodies are not held in memory (they stream into their files as they arrive), so what is
//! bounded is messages: each is a file written and not yet named, an open descriptor until the
//! commit thread names it (see [`crate::capture::MAX_OPEN_FILES`]), waiting for the disk.

/// Messages the capture threads may hold at once.
pub const MAX_IN_FLIGHT: usize = crate::capture::MAX_OPEN_FILES;

/// Messages with the capture threads.
#[derive(Debug)]
pub struct CaptureBudget {
    messages: usize,
    max_messages: usize,
}

impl CaptureBudget {
    pub fn new(max_messages: usize) -> CaptureBudget {
        CaptureBudget {
            messages: 0,
            max_messages,
        }
    }

    /// Reserves room for a message; false (nothing reserved) when the budget is spent.
    pub fn try_reserve(&mut self) -> bool {
        if self.messages == self.max_messages {
            return false;
        }
        self.messages += 1;
        true
    }

    /// A reserved message is back from the capture threads (or was never handed over).
    pub fn release(&mut self) {
        self.messages -= 1;
    }

    /// No message is with the capture threads.
    pub fn is_idle(&self) -> bool {
        self.messages == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserves_up_to_the_budget_and_no_further() {
        let mut budget = CaptureBudget::new(2);
        assert!(budget.is_idle());
        assert!(budget.try_reserve());
        assert!(budget.try_reserve(), "exactly the budget");
        assert!(!budget.try_reserve(), "over the budget");
        budget.release();
        assert!(!budget.is_idle());
        assert!(budget.try_reserve());
        budget.release();
        budget.release();
        assert!(budget.is_idle());
    }
}
