//! A SHA-256 whose running state can be written down and picked up again,
//! on another node, after any number of bytes: the eight state words, the
//! count of bytes hashed, and the (under 64) bytes of an unfinished block.
//!
//! Owns: that state and its encoding (`to_bytes` / `from_bytes`, 104 bytes
//! at most). Must not: do I/O.
//!
//! The block function is sha2's own `compress256` (SHA-NI or the assembly
//! sha2 picks at run time), so hashing speed is `Sha256`'s; only the
//! padding at the end is written here, and tests compare every result with
//! `Sha256`.

use sha2::digest::generic_array::{typenum::U64, GenericArray};

const INITIAL: [u32; 8] = [
    0x6a09_e667,
    0xbb67_ae85,
    0x3c6e_f372,
    0xa54f_f53a,
    0x510e_527f,
    0x9b05_688c,
    0x1f83_d9ab,
    0x5be0_cd19,
];

/// Tag of the encoding, so a future format can be told apart.
const FORMAT: u8 = 1;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sha256Midstate {
    state: [u32; 8],
    /// Bytes hashed so far, including `pending`.
    len: u64,
    pending: Vec<u8>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("hash state is unreadable")]
pub struct BadMidstate;

impl Default for Sha256Midstate {
    fn default() -> Self {
        Self::new()
    }
}

impl Sha256Midstate {
    pub fn new() -> Self {
        Sha256Midstate {
            state: INITIAL,
            len: 0,
            pending: Vec::with_capacity(64),
        }
    }

    /// Bytes hashed so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn update(&mut self, mut data: &[u8]) {
        self.len += data.len() as u64;
        if !self.pending.is_empty() {
            let take = (64 - self.pending.len()).min(data.len());
            self.pending.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.pending.len() < 64 {
                return;
            }
            let block = std::mem::take(&mut self.pending);
            self.compress(&block);
            self.pending = block;
            self.pending.clear();
        }
        let whole = data.len() - data.len() % 64;
        self.compress(&data[..whole]);
        self.pending.extend_from_slice(&data[whole..]);
    }

    /// `data.len()` is a multiple of 64.
    fn compress(&mut self, data: &[u8]) {
        debug_assert_eq!(data.len() % 64, 0);
        let blocks = data.len() / 64;
        // SAFETY: `GenericArray<u8, U64>` is `repr(transparent)` over 64
        // bytes with alignment 1, so `blocks` of them are exactly `data`.
        // One call for every block lets sha2 keep the state in registers
        // across blocks (a call per block measured slower).
        let blocks: &[GenericArray<u8, U64>] =
            unsafe { std::slice::from_raw_parts(data.as_ptr().cast(), blocks) };
        sha2::compress256(&mut self.state, blocks);
    }

    pub fn finalize(mut self) -> [u8; 32] {
        let bits = self.len.wrapping_mul(8);
        let mut tail = std::mem::take(&mut self.pending);
        tail.push(0x80);
        while tail.len() % 64 != 56 {
            tail.push(0);
        }
        tail.extend_from_slice(&bits.to_be_bytes());
        self.compress(&tail);
        let mut out = [0u8; 32];
        for (chunk, word) in out.chunks_exact_mut(4).zip(self.state) {
            chunk.copy_from_slice(&word.to_be_bytes());
        }
        out
    }

    /// format (1) | length (8, big-endian) | state (32) | pending (0..64)
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + 8 + 32 + self.pending.len());
        out.push(FORMAT);
        out.extend_from_slice(&self.len.to_be_bytes());
        for w in self.state {
            out.extend_from_slice(&w.to_be_bytes());
        }
        out.extend_from_slice(&self.pending);
        out
    }

    pub fn from_bytes(b: &[u8]) -> Result<Self, BadMidstate> {
        if b.len() < 41 || b[0] != FORMAT {
            return Err(BadMidstate);
        }
        let len = u64::from_be_bytes(b[1..9].try_into().map_err(|_| BadMidstate)?);
        let mut state = [0u32; 8];
        for (i, w) in state.iter_mut().enumerate() {
            let at = 9 + i * 4;
            *w = u32::from_be_bytes(b[at..at + 4].try_into().map_err(|_| BadMidstate)?);
        }
        let pending = b[41..].to_vec();
        if pending.len() >= 64 || pending.len() as u64 != len % 64 {
            return Err(BadMidstate);
        }
        Ok(Sha256Midstate {
            state,
            len,
            pending,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[test]
    fn matches_sha256_for_every_length_around_blocks() {
        for n in (0..300).chain([1000, 4095, 4096, 4097, 1 << 20]) {
            let d = data(n);
            let mut m = Sha256Midstate::new();
            m.update(&d);
            assert_eq!(m.finalize()[..], Sha256::digest(&d)[..], "length {n}");
        }
    }

    #[test]
    fn any_split_and_any_round_trip_gives_the_same_digest() {
        let d = data(5000);
        let want = Sha256::digest(&d);
        for cut in [0, 1, 55, 56, 63, 64, 65, 127, 128, 129, 2500, 4999, 5000] {
            let mut m = Sha256Midstate::new();
            m.update(&d[..cut]);
            // Written down and picked up again, as another node would.
            let mut m = Sha256Midstate::from_bytes(&m.to_bytes()).unwrap();
            assert_eq!(m.len(), cut as u64);
            for piece in d[cut..].chunks(7) {
                m.update(piece);
            }
            assert_eq!(m.finalize()[..], want[..], "cut at {cut}");
        }
    }

    #[test]
    fn refuses_damaged_state() {
        let mut m = Sha256Midstate::new();
        m.update(b"abc");
        let good = m.to_bytes();
        assert!(Sha256Midstate::from_bytes(&good).is_ok());
        assert_eq!(Sha256Midstate::from_bytes(&good[..40]), Err(BadMidstate));
        let mut wrong_format = good.clone();
        wrong_format[0] = 9;
        assert_eq!(Sha256Midstate::from_bytes(&wrong_format), Err(BadMidstate));
        let mut extra = good.clone();
        extra.push(0);
        assert_eq!(Sha256Midstate::from_bytes(&extra), Err(BadMidstate));
        assert_eq!(Sha256Midstate::from_bytes(&[]), Err(BadMidstate));
    }
}
