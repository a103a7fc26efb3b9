//! The token the loop gives the resolver with a request, to find the connection (or the
//! session lingering after it) that the answer is for.

/// The resolver token of a connection: its slot and (the low 32 bits of) its serial, so an
/// answer for an earlier connection in the same slot is told apart.
pub fn token(slot: usize, serial: u64) -> u64 {
    (serial << 32) | (slot as u64 & 0xffff_ffff)
}

/// The connection slot a token was made for.
pub fn token_slot(token: u64) -> usize {
    (token & 0xffff_ffff) as usize
}

/// Whether `token` was made for the connection with `serial` (not an earlier one in its slot).
pub fn token_matches(token: u64, serial: u64) -> bool {
    token >> 32 == serial & 0xffff_ffff
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_tell_slots_and_serials_apart() {
        let t = token(7, 41);
        assert_eq!(token_slot(t), 7);
        assert!(token_matches(t, 41));
        assert!(!token_matches(t, 42));
        // The serial is compared in its low 32 bits.
        assert!(token_matches(token(7, (1 << 32) + 5), 5));
    }
}
