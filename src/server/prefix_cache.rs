//! The prefix cache's bookkeeping: sequences of finished requests kept with the tokens their KV
//! holds, bounded by bytes and evicted least recently used first, so a new request can start
//! from the longest cached prefix of its prompt (the scheduler copies that prefix into the new
//! sequence). Generic over what an entry holds, so it is tested without a model.

/// Finished sequences and the tokens in their KV. Entries never hold a prefix of one another:
/// a longer sequence supersedes the entries it extends.
pub struct PrefixCache<T> {
    entries: Vec<Entry<T>>,
    bytes: usize,
    limit: usize,
    clock: u64,
}

struct Entry<T> {
    item: T,
    tokens: Vec<u32>,
    bytes: usize,
    used: u64,
}

/// What [`PrefixCache::insert`] gives back for the caller to free.
pub struct Released<T> {
    /// Items no longer held: evicted, superseded, or the inserted one when it was not kept.
    pub items: Vec<T>,
    /// How many of them left because the byte bound was reached.
    pub evicted: usize,
}

impl<T> PrefixCache<T> {
    /// An empty cache holding at most `limit` bytes (0 keeps nothing).
    pub fn new(limit: usize) -> PrefixCache<T> {
        PrefixCache {
            entries: Vec::new(),
            bytes: 0,
            limit,
            clock: 0,
        }
    }

    /// Bytes held (never above the limit).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entry sharing the longest prefix with `tokens` and that length, capped at `max_len`
    /// (`None` when no entry shares a token). The entry counts as used.
    pub fn lookup(&mut self, tokens: &[u32], max_len: usize) -> Option<(&T, usize)> {
        let (index, len) = self
            .entries
            .iter()
            .enumerate()
            .map(|(i, e)| (i, common_prefix(&e.tokens, tokens).min(max_len)))
            .max_by_key(|&(i, len)| (len, self.entries[i].used))?;
        if len == 0 {
            return None;
        }
        self.clock += 1;
        let entry = &mut self.entries[index];
        entry.used = self.clock;
        Some((&entry.item, len))
    }

    /// Keeps `item`, whose KV holds `tokens` and takes `bytes`, as the most recently used
    /// entry, evicting the least recently used ones while the bound is exceeded. An item larger
    /// than the bound, or whose tokens an entry already holds, is given back instead.
    pub fn insert(&mut self, item: T, tokens: Vec<u32>, bytes: usize) -> Released<T> {
        self.clock += 1;
        let mut released = Released {
            items: Vec::new(),
            evicted: 0,
        };
        let covering = self
            .entries
            .iter_mut()
            .find(|e| e.tokens.starts_with(&tokens));
        if tokens.is_empty() || bytes > self.limit || covering.is_some() {
            if let Some(entry) = covering {
                entry.used = self.clock;
            }
            released.items.push(item);
            return released;
        }
        let (extended, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.entries)
            .into_iter()
            .partition(|e| tokens.starts_with(&e.tokens));
        self.entries = kept;
        for entry in extended {
            self.bytes -= entry.bytes;
            released.items.push(entry.item);
        }
        while self.bytes + bytes > self.limit {
            let Some(oldest) = (0..self.entries.len()).min_by_key(|&i| self.entries[i].used) else {
                break;
            };
            let entry = self.entries.swap_remove(oldest);
            self.bytes -= entry.bytes;
            released.items.push(entry.item);
            released.evicted += 1;
        }
        self.bytes += bytes;
        self.entries.push(Entry {
            item,
            tokens,
            bytes,
            used: self.clock,
        });
        released
    }

    /// Empties the cache, giving back every item.
    pub fn drain(&mut self) -> Vec<T> {
        self.bytes = 0;
        self.entries.drain(..).map(|e| e.item).collect()
    }
}

/// Length of the common prefix of `a` and `b`.
fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_finds_the_longest_shared_prefix_capped() {
        let mut cache = PrefixCache::new(100);
        cache.insert("a", vec![1, 2, 3, 4], 10);
        cache.insert("b", vec![1, 2, 9], 10);
        assert_eq!(cache.lookup(&[1, 2, 3, 7], 10), Some((&"a", 3)));
        assert_eq!(cache.lookup(&[1, 2, 9, 9], 10), Some((&"b", 3)));
        assert_eq!(cache.lookup(&[1, 2, 3, 4], 3), Some((&"a", 3)), "capped");
        assert_eq!(cache.lookup(&[5], 10), None);
        assert_eq!(cache.lookup(&[1, 2], 0), None);
    }

    #[test]
    fn eviction_keeps_the_bytes_under_the_bound_least_recently_used_first() {
        let mut cache = PrefixCache::new(25);
        assert!(cache.insert("a", vec![1], 10).items.is_empty());
        assert!(cache.insert("b", vec![2], 10).items.is_empty());
        cache.lookup(&[1], 1); // "a" is now more recent than "b"
        let released = cache.insert("c", vec![3], 10);
        assert_eq!((released.items, released.evicted), (vec!["b"], 1));
        assert_eq!((cache.bytes(), cache.len()), (20, 2));
        let released = cache.insert("d", vec![4], 26);
        assert_eq!(
            (released.items, released.evicted),
            (vec!["d"], 0),
            "too big"
        );
        let released = cache.insert("e", vec![5], 25);
        assert_eq!(released.evicted, 2);
        assert_eq!(cache.bytes(), 25);
        let mut none = PrefixCache::new(0);
        assert_eq!(none.insert("x", vec![1], 1).items, vec!["x"], "0 disables");
    }

    #[test]
    fn an_entry_supersedes_its_prefixes_and_is_not_duplicated() {
        let mut cache = PrefixCache::new(100);
        cache.insert("turn1", vec![1, 2], 10);
        let released = cache.insert("turn2", vec![1, 2, 3, 4], 20);
        assert_eq!((released.items, released.evicted), (vec!["turn1"], 0));
        assert_eq!((cache.len(), cache.bytes()), (1, 20));
        let released = cache.insert("again", vec![1, 2, 3], 10);
        assert_eq!(released.items, vec!["again"], "already covered");
        assert_eq!(cache.drain(), vec!["turn2"]);
        assert_eq!(cache.bytes(), 0);
    }
}
