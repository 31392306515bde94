//! The scheduler's waiting sequences, in the order they are to be admitted: every
//! reserved sequence before any standard one (FIFO among reserved), and standard
//! ones by weighted fair sharing among their share keys (FIFO within a key). A
//! preempted sequence goes back to the front of its own queue.
//!
//! Fair sharing is start-time fair queueing on tokens. Each share key has a virtual
//! time: the tokens scheduled for its standard sequences (prefill chunks,
//! recomputes and decodes alike, charged when planned) divided by its weight. The
//! next standard admission goes to the waiting key with the least virtual time
//! (the lowest key on a tie). A key that becomes active again (its first live
//! sequence after none) is lifted to the virtual clock, the least virtual time
//! among active keys, so time spent idle banks no credit; when no key is active,
//! the clock moves up to the most any key has had, so after an idle spell every
//! key starts even. Picking and activating are O(keys).
//!
//! With one key (every request standard, key 0, as the CPU backend's default) this
//! is exactly FIFO with preempted sequences first.

use std::collections::{BTreeMap, VecDeque};

use super::request::{Priority, SchedClass};
use crate::backend::SeqId;

#[derive(Debug, Default)]
pub struct WaitQueue {
    reserved: VecDeque<SeqId>,
    keys: BTreeMap<u32, Share>,
    /// The least virtual time among active keys as last seen; never decreases, so
    /// a key returning from idle cannot start behind the others.
    clock: f64,
    len: usize,
}

/// One share key's standing. Kept after the key goes idle (keys are tenants, a
/// bounded set) so a key that overdrew its share stays behind when it returns.
#[derive(Debug)]
struct Share {
    waiting: VecDeque<SeqId>,
    /// Standard sequences of this key the scheduler holds, waiting or running;
    /// the key is active while this is above zero.
    live: usize,
    weight: u32,
    vtime: f64,
}

impl WaitQueue {
    /// Queues a sequence new to the scheduler; a standard one makes its key live.
    pub fn push_new(&mut self, id: SeqId, class: SchedClass) {
        match class.priority {
            Priority::Reserved => self.reserved.push_back(id),
            Priority::Standard => {
                self.activate(class);
                self.share_mut(class).waiting.push_back(id);
            }
        }
        self.len += 1;
    }

    /// Puts a preempted sequence back at the front of its own queue.
    pub fn push_front(&mut self, id: SeqId, class: SchedClass) {
        match class.priority {
            Priority::Reserved => self.reserved.push_front(id),
            Priority::Standard => self.share_mut(class).waiting.push_front(id),
        }
        self.len += 1;
    }

    /// The sequence to admit next.
    pub fn front(&self) -> Option<SeqId> {
        if let Some(&id) = self.reserved.front() {
            return Some(id);
        }
        let key = self.next_key()?;
        self.keys.get(&key)?.waiting.front().copied()
    }

    /// Takes the sequence `front` returns out of the queue.
    pub fn pop_front(&mut self) -> Option<SeqId> {
        let id = match self.reserved.pop_front() {
            Some(id) => id,
            None => {
                let key = self.next_key()?;
                self.keys.get_mut(&key)?.waiting.pop_front()?
            }
        };
        self.len -= 1;
        Some(id)
    }

    /// Drops a waiting sequence (an abort); false if it was not waiting.
    pub fn remove(&mut self, id: SeqId, class: SchedClass) -> bool {
        let queue = match class.priority {
            Priority::Reserved => &mut self.reserved,
            Priority::Standard => match self.keys.get_mut(&class.share_key) {
                Some(share) => &mut share.waiting,
                None => return false,
            },
        };
        let Some(i) = queue.iter().position(|&w| w == id) else {
            return false;
        };
        queue.remove(i);
        self.len -= 1;
        true
    }

    /// A sequence left the scheduler (finished or aborted, waiting or running).
    pub fn released(&mut self, class: SchedClass) {
        if class.priority == Priority::Standard {
            if let Some(share) = self.keys.get_mut(&class.share_key) {
                share.live = share.live.saturating_sub(1);
            }
        }
    }

    /// Counts `tokens` planned for a sequence of `class` against its key's share.
    /// Reserved work is paid for by the reserved rate, not the fair share.
    pub fn charge(&mut self, class: SchedClass, tokens: usize) {
        if class.priority == Priority::Standard {
            if let Some(share) = self.keys.get_mut(&class.share_key) {
                share.vtime += tokens as f64 / f64::from(share.weight);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Waiting sequences of one priority.
    pub fn len_of(&self, priority: Priority) -> usize {
        match priority {
            Priority::Reserved => self.reserved.len(),
            Priority::Standard => self.len - self.reserved.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn contains(&self, id: SeqId) -> bool {
        self.iter().any(|w| w == id)
    }

    /// Every waiting sequence, reserved first, in no particular order after that.
    pub fn iter(&self) -> impl Iterator<Item = SeqId> + '_ {
        self.reserved.iter().chain(self.keys.values().flat_map(|s| s.waiting.iter())).copied()
    }

    /// The key with waiting sequences and the least virtual time.
    fn next_key(&self) -> Option<u32> {
        self.keys
            .iter()
            .filter(|(_, s)| !s.waiting.is_empty())
            .min_by(|a, b| a.1.vtime.total_cmp(&b.1.vtime))
            .map(|(&k, _)| k)
    }

    /// Counts one more live sequence for the key; a key going from idle to
    /// active starts no earlier than the virtual clock.
    fn activate(&mut self, class: SchedClass) {
        let active_min =
            self.keys.values().filter(|s| s.live > 0).map(|s| s.vtime).min_by(|a, b| a.total_cmp(b));
        let most = || self.keys.values().map(|s| s.vtime).max_by(|a, b| a.total_cmp(b));
        if let Some(t) = active_min.or_else(most) {
            self.clock = self.clock.max(t);
        }
        let clock = self.clock;
        let share = self.share_mut(class);
        if share.live == 0 {
            share.vtime = share.vtime.max(clock);
        }
        share.live += 1;
        share.weight = class.weight.max(1);
    }

    fn share_mut(&mut self, class: SchedClass) -> &mut Share {
        self.keys.entry(class.share_key).or_insert_with(|| Share {
            waiting: VecDeque::new(),
            live: 0,
            weight: class.weight.max(1),
            vtime: 0.0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn standard(share_key: u32, weight: u32) -> SchedClass {
        SchedClass { priority: Priority::Standard, share_key, weight }
    }

    const RESERVED: SchedClass = SchedClass { priority: Priority::Reserved, share_key: 9, weight: 1 };

    #[test]
    fn reserved_first_then_the_least_served_key() {
        let mut q = WaitQueue::default();
        q.push_new(1, standard(0, 1));
        q.push_new(2, standard(0, 1));
        q.push_new(3, standard(1, 1));
        q.push_new(4, RESERVED);
        assert_eq!(q.pop_front(), Some(4));
        q.charge(standard(0, 1), 10);
        assert_eq!(q.front(), Some(3), "key 1 has had less");
        assert_eq!(q.pop_front(), Some(3));
        q.charge(standard(1, 1), 30);
        assert_eq!((q.pop_front(), q.pop_front(), q.pop_front()), (Some(1), Some(2), None));
        assert!(q.is_empty());
    }

    #[test]
    fn a_key_back_from_idle_starts_at_the_clock() {
        let mut q = WaitQueue::default();
        q.push_new(1, standard(0, 1));
        q.pop_front();
        q.charge(standard(0, 1), 1000);
        // Key 1 arrives while key 0 is active: it starts at key 0's standing, not 0.
        q.push_new(2, standard(1, 1));
        assert_eq!(q.keys[&1].vtime, 1000.0);
        q.pop_front();
        q.charge(standard(1, 1), 5000);
        q.released(standard(0, 1));
        q.released(standard(1, 1));
        // Everything idle, then a new key comes first: it starts with the others.
        q.push_new(3, standard(2, 1));
        q.push_new(4, standard(0, 1));
        assert_eq!(q.keys[&2].vtime, 6000.0, "key 1's 1000 + 5000");
        assert_eq!(q.keys[&0].vtime, 6000.0);
        assert_eq!(q.front(), Some(4), "even standing: the lower key");
    }
}
