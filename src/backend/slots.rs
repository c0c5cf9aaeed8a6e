//! A table of objects addressed by integer ids that are never reused, so a freed id stays
//! invalid instead of silently naming a newer object.

use crate::error::{Error, Result};
use std::collections::HashMap;

/// Objects of one kind (`what` names it in errors: "sequence", "sampler").
pub struct Slots<T> {
    items: HashMap<u64, T>,
    next: u64,
    what: &'static str,
}

impl<T> Slots<T> {
    /// An empty table; ids start at 1 (0 is never valid, so C callers can use it as "none").
    pub fn new(what: &'static str) -> Slots<T> {
        Slots {
            items: HashMap::new(),
            next: 1,
            what,
        }
    }

    /// Stores `item` under a fresh id.
    pub fn insert(&mut self, item: T) -> u64 {
        let id = self.next;
        self.next += 1;
        self.items.insert(id, item);
        id
    }

    /// The object `id`, or "unknown sequence id 7 (never created, or freed)".
    pub fn get(&self, id: u64) -> Result<&T> {
        self.items.get(&id).ok_or_else(|| self.unknown(id))
    }

    /// The object `id`, mutably.
    pub fn get_mut(&mut self, id: u64) -> Result<&mut T> {
        let what = self.what;
        self.items.get_mut(&id).ok_or_else(|| unknown(what, id))
    }

    /// Replaces the object `id` (which must exist) with `item`.
    pub fn replace(&mut self, id: u64, item: T) -> Result<()> {
        *self.get_mut(id)? = item;
        Ok(())
    }

    /// Removes and returns the object `id`.
    pub fn remove(&mut self, id: u64) -> Result<T> {
        self.items.remove(&id).ok_or_else(|| self.unknown(id))
    }

    /// Live objects.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Mutable references to the objects `ids`, in that order; fails on an unknown or repeated id.
    pub fn many_mut(&mut self, ids: &[u64]) -> Result<Vec<&mut T>> {
        for (i, id) in ids.iter().enumerate() {
            self.get(*id)?;
            if ids[..i].contains(id) {
                return Err(Error::InvalidArgument(format!(
                    "{} id {id} appears twice in one batch",
                    self.what
                )));
            }
        }
        let mut picked: HashMap<u64, &mut T> = self
            .items
            .iter_mut()
            .filter(|(id, _)| ids.contains(id))
            .map(|(id, item)| (*id, item))
            .collect();
        Ok(ids.iter().filter_map(|id| picked.remove(id)).collect())
    }

    fn unknown(&self, id: u64) -> Error {
        unknown(self.what, id)
    }
}

/// "unknown sequence id 7 (never created, or already freed)".
fn unknown(what: &str, id: u64) -> Error {
    Error::InvalidArgument(format!(
        "unknown {what} id {id} (never created, or already freed)"
    ))
}
