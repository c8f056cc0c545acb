//! What a store holds, counted offline (`keel storage check`): the schema version and,
//! per table, the keys and bytes. Every table is read page by page, each page in a
//! fresh snapshot transaction, so a large store never meets a backend's transaction
//! limits; the counts are therefore not one consistent snapshot (meant for a stopped
//! server or a rough look at a live one).

use serde::Serialize;

use crate::keys::table_name;
use crate::namespaces::{SCHEMA_VERSION, SCHEMA_VERSION_KEY};
use crate::storage::{KeyRange, KvStore};
use crate::tables;
use crate::Result;

/// Keys read per page.
const PAGE: usize = 1000;

/// One table's share of the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TableCount {
    pub prefix: u8,
    /// The table's name, or `unknown` for a prefix byte no table of this version uses.
    pub table: &'static str,
    /// Keys (a record larger than one value is several chunk keys).
    pub keys: u64,
    /// Key and value bytes.
    pub bytes: u64,
}

/// The store's census.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Census {
    /// The schema version written in the store (`None`: an empty or foreign store).
    pub schema_version: Option<u64>,
    /// The version this binary reads and writes.
    pub expected_schema_version: u64,
    /// Tables with at least one key, by prefix byte.
    pub tables: Vec<TableCount>,
}

impl Census {
    pub fn total_keys(&self) -> u64 {
        self.tables.iter().map(|t| t.keys).sum()
    }

    pub fn total_bytes(&self) -> u64 {
        self.tables.iter().map(|t| t.bytes).sum()
    }

    /// Keys of one table (0 when absent).
    pub fn keys_of(&self, table: &str) -> u64 {
        self.tables
            .iter()
            .find(|t| t.table == table)
            .map_or(0, |t| t.keys)
    }
}

/// Counts every key of `store` by table.
pub async fn count(store: &dyn KvStore) -> Result<Census> {
    let schema_version = {
        let mut txn = store.begin().await?;
        tables::get_snapshot::<u64>(txn.as_mut(), &tables::meta_key(SCHEMA_VERSION_KEY)).await?
    };
    let mut counts = Vec::new();
    for prefix in 0..=u8::MAX {
        let mut count = TableCount {
            prefix,
            table: table_name(prefix).unwrap_or("unknown"),
            keys: 0,
            bytes: 0,
        };
        tables::scan_pages::<crate::Error>(store, &KeyRange::prefix(&[prefix]), PAGE, |page| {
            for (k, v) in &page {
                count.keys += 1;
                count.bytes += (k.len() + v.len()) as u64;
            }
            Ok(())
        })
        .await?;
        if count.keys > 0 {
            counts.push(count);
        }
    }
    Ok(Census {
        schema_version,
        expected_schema_version: SCHEMA_VERSION,
        tables: counts,
    })
}
