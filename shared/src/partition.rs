//! Which partition an account (or a transfer's decision) lives in.
//!
//! `partition = fnv1a_64(bytes) % partition_count`. The hash is FNV-1a, 64
//! bits (offset basis 0xcbf29ce484222325, prime 0x100000001b3), over the
//! account id's UTF-8 bytes, or over the 16 bytes of a transaction id. It is
//! part of the on-disk format: changing it would strand every account, so a
//! test pins known values.

use crate::ids::{AccountId, TransactionId};

/// A partition number in `0..partition_count`.
pub type PartitionId = u32;

pub fn fnv1a_64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

pub fn account_partition(account: &AccountId, partition_count: u32) -> PartitionId {
    (fnv1a_64(account.as_str().as_bytes()) % u64::from(partition_count)) as PartitionId
}

/// The partition that holds a transfer's dedup record and decision: found
/// from the transaction id alone, so any retry, any coordinator and any
/// status lookup finds it without knowing the body.
pub fn decision_partition(id: TransactionId, partition_count: u32) -> PartitionId {
    (fnv1a_64(id.0.as_bytes()) % u64::from(partition_count)) as PartitionId
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_never_changes() {
        // Reference values of FNV-1a 64.
        assert_eq!(fnv1a_64(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a_64(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv1a_64(b"foobar"), 0x85944171f73967e8);
        let alice = AccountId::parse("alice").unwrap();
        assert_eq!(
            account_partition(&alice, 64),
            (fnv1a_64(b"alice") % 64) as u32
        );
    }

    #[test]
    fn accounts_spread_over_partitions() {
        let mut seen = [0u32; 64];
        for i in 0..6400 {
            let id = AccountId::parse(format!("acct-{i}")).unwrap();
            seen[account_partition(&id, 64) as usize] += 1;
        }
        assert!(seen.iter().all(|&n| n > 50 && n < 150), "{seen:?}");
    }
}
